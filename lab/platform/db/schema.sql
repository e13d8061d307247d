-- The platform's schema, created with the database on an empty volume (the application's own migrations in
-- production). market_data would be a TimescaleDB hypertable there.
CREATE TABLE market_data (ts timestamptz NOT NULL, symbol text NOT NULL, price numeric(18, 6) NOT NULL,
                          volume bigint NOT NULL, PRIMARY KEY (symbol, ts));
CREATE TABLE orders (id bigserial PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now(), symbol text NOT NULL,
                     side text NOT NULL CHECK (side IN ('buy', 'sell')), qty numeric(18, 6) NOT NULL,
                     price numeric(18, 6));
CREATE TABLE positions (symbol text PRIMARY KEY, qty numeric(18, 6) NOT NULL, updated_at timestamptz NOT NULL);
