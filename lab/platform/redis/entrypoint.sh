#!/bin/sh
# Redis for sessions and cache; its password is written into a config file, never onto the command line.
set -eu
umask 077
{
  echo "bind 0.0.0.0"
  echo "port 6379"
  echo "dir /data"
  echo "appendonly ${REDIS_APPENDONLY:-yes}"
  echo "save 3600 1"
  echo "repl-diskless-sync-delay 0"
  echo "requirepass $(cat /run/christmas/redis_password)"
} > /run/redis.conf
exec redis-server /run/redis.conf
