#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) on loopback for the real-broker test
# suite and benchmarks. Our CI machines have no Docker engine, so instead of a container we run the
# broker straight from the jars Maven Central publishes (see pom.xml): only Java 17+ and Maven needed.
#
#   kraft.sh fetch              copy the broker jars into target/lib (no-op when up to date; silent)
#   kraft.sh start PORT DATADIR format DATADIR once, write DATADIR/server.properties and exec the broker
#                               in the foreground (SIGTERM = clean shutdown). Client listener:
#                               PLAINTEXT://127.0.0.1:PORT; controller: 127.0.0.1:$CONTROLLER_PORT
#                               (default PORT+1). Logs go to DATADIR/logs, data to DATADIR/data.
# Env: CONTROLLER_PORT, KAFKA_HEAP_OPTS (default -Xmx512m -Xms512m), KAFKA_LOG_LEVEL (default INFO),
#      KAFKA_OPTS (extra JVM flags). A restart on the same DATADIR must use the same ports.
#      SECURE_PORT adds a SASL_SSL://127.0.0.1:SECURE_PORT listener: TLS with PEM files from TLS_DIR
#      (broker.pem: the broker's key and certificate chain; ca.pem: the CA it trusts for client
#      certificates, which it requires), SASL PLAIN, SCRAM-SHA-256/512 (SASL_USERS: "name:password ...",
#      SCRAM credentials added when DATADIR is formatted) and OAUTHBEARER (Kafka's unsecured JWT
#      validator: for tests, never for production). With it come Kafka's ACLs (StandardAuthorizer): the
#      PLAINTEXT listener's clients (User:ANONYMOUS) and SUPER_USERS ("User:a;User:b") may do anything,
#      every other SASL user only what an ACL allows.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB=$HERE/target/lib

fetch() {  # refetch whenever pom.xml changed, so a stale jar (e.g. an old slf4j binding) can't linger
  local stamp; stamp=$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)
  [[ -f $LIB/.pom.sha256 && $(<"$LIB/.pom.sha256") == "$stamp" ]] && return 0
  rm -rf "$LIB"
  local out  # mvn -q still emits colour codes on success: show its output only when it fails
  out=$(cd "$HERE" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=target/lib 2>&1) ||
    { echo "$out" >&2; return 1; }
  echo "$stamp" >"$LIB/.pom.sha256"
}

start() {
  local port=$1 dir cport=${CONTROLLER_PORT:-$(($1 + 1))}
  mkdir -p "$2/data" "$2/logs"
  dir=$(cd "$2" && pwd)
  fetch
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" scram=()
  if [[ -n ${SECURE_PORT:-} ]]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$SECURE_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
    local user plain=""
    for user in $SASL_USERS; do
      scram+=(--add-scram "SCRAM-SHA-256=[name=${user%%:*},password=${user#*:}]"
        --add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
      plain="$plain user_${user%%:*}=\"${user#*:}\""
    done
  fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
listeners=$listeners
advertised.listeners=$listeners
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$cport
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  if [[ -n ${SECURE_PORT:-} ]]; then
    local l=listener.name.sasl_ssl
    cat >>"$dir/server.properties" <<EOF
$l.ssl.keystore.type=PEM
$l.ssl.keystore.location=$TLS_DIR/broker.pem
$l.ssl.truststore.type=PEM
$l.ssl.truststore.location=$TLS_DIR/ca.pem
$l.ssl.client.auth=required
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
$l.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER
$l.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain;
$l.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
$l.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;${SUPER_USERS:-}
$l.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
EOF
  fi
  # log4j2: everything at $KAFKA_LOG_LEVEL to DATADIR/logs/server.log, only ERROR to stderr.
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.filter.t.type = ThresholdFilter
appender.err.filter.t.level = ERROR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [kafka] %p %m (%c)%n
rootLogger = ${KAFKA_LOG_LEVEL:-INFO}, file, err
logger.req.name = kafka.request.logger
logger.req.level = WARN
EOF
  local java=(java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir/logs" ${KAFKA_OPTS:-}
    -cp "$LIB/*")
  if [[ ! -f $dir/data/meta.properties ]]; then
    # Random cluster id: Kafka's Uuid is 16 random bytes, url-safe base64 without padding.
    local cid; cid=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    "${java[@]}" kafka.tools.StorageTool format --standalone --ignore-formatted \
      --cluster-id "$cid" --config "$dir/server.properties" "${scram[@]}" >>"$dir/logs/format.log"
  fi
  exec "${java[@]}" kafka.Kafka "$dir/server.properties"
}

case ${1:-} in
  fetch) fetch ;;
  start) [[ $# -eq 3 ]] || { echo "usage: $0 start PORT DATADIR" >&2; exit 2; }; start "$2" "$3" ;;
  *) echo "usage: $0 fetch | start PORT DATADIR" >&2; exit 2 ;;
esac
