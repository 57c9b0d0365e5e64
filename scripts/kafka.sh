#!/usr/bin/env bash
# Fetch, start and stop a real single-node Apache Kafka broker (KRaft) on loopback.
#
#   scripts/kafka.sh fetch          resolve the jars from Maven Central into .kafka/jars (cached)
#   scripts/kafka.sh start [PORT]   format a fresh KRaft log dir and start the broker;
#                                   prints the bootstrap address and writes it to .kafka/bootstrap
#   scripts/kafka.sh stop           stop the broker cleanly (SIGTERM, then wait)
#   scripts/kafka.sh restart        stop it and start it again on the same ports and log dir
#                                   (its topics, messages and committed offsets kept)
#
# SHADOWDIFF_KAFKA_HOME puts the broker's state (log dir, pid, bootstrap) elsewhere, e.g. a
# private broker for a fault drill; the jars stay in .kafka/jars, fetched once.
#
# Why jars and not the tarball: the machine reaches Maven Central only; the broker is the same
# code (kafka.Kafka / kafka.tools.StorageTool from org.apache.kafka:kafka_2.13).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
state="${SHADOWDIFF_KAFKA_HOME:-$root/.kafka}"
jars="$root/.kafka/jars"

fetch() {
  if [ -f "$jars/.complete" ]; then return 0; fi
  mkdir -p "$jars"
  # Maven's output goes to stderr, uncoloured: `start` prints the bootstrap address on stdout,
  # and a caller that reads it must never get escape codes or download logs with it
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$jars" >&2
  touch "$jars/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  fetch >&2
  if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    cat "$state/bootstrap"; return 0
  fi
  # the ports are picked free, then bound by the JVM a moment later; another process may take
  # one in between, so a broker that exits at start is retried on new ports
  local attempt
  for attempt in 1 2 3; do
    if launch "$@"; then cat "$state/bootstrap"; return 0; fi
    echo "kafka broker start attempt $attempt failed; see $state/stdout.log" >&2
    tail -n 30 "$state/stdout.log" >&2 || true
  done
  return 1
}

launch() {
  local port="${1:-$(free_port)}" ctl
  ctl="$(free_port)"
  local data="$state/data"
  rm -rf "$data"; mkdir -p "$data"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# keep every message: recordings and test topics carry event times of any age, which the
# default 7-day time retention deletes minutes after they are produced
log.retention.ms=-1
log.retention.bytes=-1
PROPS
  cat > "$state/log4j2.properties" <<'LOG'
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName=${sys:kafka.logs.dir}/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
LOG
  local cp="$jars/*" opts=(-Xms256m -Xmx1g -Dkafka.logs.dir="$state" -Dlog4j2.configurationFile="$state/log4j2.properties")
  java "${opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
       -c "$state/server.properties" --standalone >/dev/null 2>"$state/format.err" \
    || java "${opts[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
       -c "$state/server.properties" >/dev/null
  echo "127.0.0.1:$port" > "$state/bootstrap"
  : > "$state/stdout.log"
  run_broker
}

run_broker() {
  local cp="$jars/*" opts=(-Xms256m -Xmx1g -Dkafka.logs.dir="$state" -Dlog4j2.configurationFile="$state/log4j2.properties")
  local port; port="$(sed -n 's/^listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\),.*/\1/p' "$state/server.properties")"
  nohup java "${opts[@]}" -cp "$cp" kafka.Kafka "$state/server.properties" >>"$state/stdout.log" 2>&1 &
  echo $! > "$state/pid"
  for _ in $(seq 1 120); do
    if python3 - "$port" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
PY
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
      rm -f "$state/pid" "$state/bootstrap"; return 1
    fi
    sleep 0.5
  done
  echo "kafka broker did not open port $port in 60 s" >&2; stop; return 1
}

stop() {
  [ -f "$state/pid" ] || return 0
  local pid; pid="$(cat "$state/pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$state/pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  restart)
    [ -f "$state/server.properties" ] || { echo "no broker was started in $state" >&2; exit 1; }
    stop; run_broker; cat "$state/bootstrap" ;;
  *) echo "usage: $0 fetch|start [PORT]|stop|restart" >&2; exit 64 ;;
esac
