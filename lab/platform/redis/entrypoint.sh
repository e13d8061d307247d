#!/bin/sh
# Redis for sessions and cache; its password is written into a config file, never onto the command line.
set -eu
umask 077
{
  echo "bind 0.0.0.0"
  echo "port 6379"
  echo "dir /data"
  echo "appendonly ${REDIS_APPENDONLY:-yes}"
  # Continuous protection ships the AOF with its timestamps, and keeps the files a rewrite replaces until shipped
  # (backup.yml sets both; this file is written anew at every start, so it must say them too).
  echo "aof-timestamp-enabled yes"
  echo "aof-disable-auto-gc yes"
  echo "save 3600 1"
  echo "repl-diskless-sync-delay 0"
  echo "requirepass $(cat /run/christmas/redis_password)"
} > /run/redis.conf
exec redis-server /run/redis.conf
