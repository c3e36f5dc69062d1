#!/usr/bin/env bash
# A peer written from the brief's message examples alone, sharing nothing with the project: bash and
# redis-cli. It sends the seed's register, runs each job it is sent with `sh -c`, answers with the
# seed's result, and stops on shutdown. It never heartbeats.
#
# Environment: REDIS_URL, PREFIX (the key prefix), PEER_ID, TOKEN (the enrollment token), and
# SERVER_IP (optional). Stream keys and the entry field `m` are as docs/protocol.md describes.
# Prints `received <json>` for every message it reads, `sent <json>` for every result, and exits 0
# on shutdown, 1 when rejected.
set -u
: "${REDIS_URL:?}" "${PREFIX:?}" "${PEER_ID:?}" "${TOKEN:?}"
SERVER_IP=${SERVER_IP:-127.0.0.1}
uplink="$PREFIX:uplink"
inbox="$PREFIX:peer:$PEER_ID:inbox"

rc() { redis-cli --no-auth-warning -u "$REDIS_URL" "$@"; }

# A bash string as a JSON string body (control characters other than \n \r \t are removed first).
json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '%s' "$s"
}

# The string value of the first "key" in a one-line JSON text, unescaped; fails if there is none.
json_get() {
  local json=$1 key=$2 rest out="" c hex
  rest=${json#*\"$key\"}
  [[ $rest == "$json" ]] && return 1
  rest=${rest#"${rest%%[![:space:]]*}"}
  [[ $rest == :* ]] || return 1
  rest=${rest:1}
  rest=${rest#"${rest%%[![:space:]]*}"}
  [[ $rest == \"* ]] || return 1
  rest=${rest:1}
  while [[ -n $rest ]]; do
    c=${rest:0:1}
    if [[ $c == '"' ]]; then
      printf '%s' "$out"
      return 0
    fi
    if [[ $c == '\' ]]; then
      c=${rest:1:1}
      rest=${rest:2}
      case $c in
        n) out+=$'\n' ;;
        t) out+=$'\t' ;;
        r) out+=$'\r' ;;
        b) out+=$'\b' ;;
        f) out+=$'\f' ;;
        u)
          hex=${rest:0:4}
          rest=${rest:4}
          out+=$(printf "\\u$hex")
          ;;
        *) out+=$c ;;
      esac
      continue
    fi
    out+=$c
    rest=${rest:1}
  done
  return 1
}

has_key() { [[ $1 =~ \"$2\"[[:space:]]*: ]]; }

send() {
  rc XADD "$uplink" '*' m "$1" >/dev/null || {
    echo "could not send to $uplink" >&2
    exit 2
  }
}

# Start after what the inbox holds already: that is old news.
last=$(rc XREVRANGE "$inbox" + - COUNT 1 | head -n 1)
[[ $last =~ ^[0-9]+-[0-9]+$ ]] || last=0-0

send "{\"msg\":\"register\",\"peer_id\":\"$(json_escape "$PEER_ID")\",\"token\":\"$(json_escape "$TOKEN")\",\"server_ip\":\"$(json_escape "$SERVER_IP")\"}"

handle() {
  local payload=$1 msg status ticket token command output result
  echo "received $payload"
  msg=$(json_get "$payload" msg) || return 0
  case $msg in
    register)
      if has_key "$payload" job; then
        ticket=$(json_get "$payload" ticket) || return 0
        token=$(json_get "$payload" token) || return 0
        command=$(json_get "$payload" command) || return 0
        # The trailing x keeps the output's final newlines through the command substitution.
        output=$({ sh -c "$command" </dev/null 2>&1; printf x; } | tr -d '\000-\010\013\014\016-\037')
        output=${output%x}
        result="{\"msg\":\"result\",\"ticket\":\"$(json_escape "$ticket")\",\"peer_id\":\"$(json_escape "$PEER_ID")\",\"token\":\"$(json_escape "$token")\",\"result\":\"$(json_escape "$output")\"}"
        send "$result"
        echo "sent $result"
        return 0
      fi
      status=$(json_get "$payload" status) || return 0
      if [[ $status == rejected ]]; then
        echo "rejected: $(json_get "$payload" reason)"
        exit 1
      fi
      [[ $status == accepted ]] && echo "accepted"
      ;;
    shutdown)
      echo "shutdown: $(json_get "$payload" reason)"
      exit 0
      ;;
  esac
  return 0
}

while true; do
  reply=$(rc XREAD COUNT 100 BLOCK 2000 STREAMS "$inbox" "$last") || {
    echo "could not read $inbox" >&2
    exit 2
  }
  [[ -z ${reply//[[:space:]]/} ]] && continue
  mapfile -t lines <<<"$reply"
  # Raw replies: the stream's name, then each entry as its id, the field name and the value.
  for ((i = 1; i + 2 < ${#lines[@]}; i += 3)); do
    last=${lines[i]}
    [[ ${lines[i + 1]} == m ]] && handle "${lines[i + 2]}"
  done
done
