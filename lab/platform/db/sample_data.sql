-- Sample trading data for the lab: what the tests back up, break and expect back.
INSERT INTO market_data SELECT timestamptz '2026-11-20 00:00:00+00' + i * interval '1 second', 'SYM' || (i % 7),
       100 + (i % 500) / 10.0, i % 900 FROM generate_series(1, 3000) AS i;
INSERT INTO orders (ts, symbol, side, qty, price) SELECT timestamptz '2026-11-20 00:00:00+00' + i * interval '1 minute',
       'SYM' || (i % 7), CASE WHEN i % 2 = 0 THEN 'buy' ELSE 'sell' END, i, 100 + i / 10.0
       FROM generate_series(1, 400) AS i;
INSERT INTO positions SELECT 'SYM' || i, i * 10, timestamptz '2026-11-20 12:00:00+00' FROM generate_series(0, 6) AS i;
