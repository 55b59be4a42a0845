# SPDX-License-Identifier: MIT
# Sourced by the scale scripts (scale.sh, storm.sh, check-scale-tools.sh):
# the fast provider's file, the same for all of them.
#
#   fast_provider_conf DIR PORT MAX_IN_FLIGHT   writes DIR/fast.conf for
#                                               fastprovider on 127.0.0.1:PORT
fast_provider_conf() {
        cat > "$1/fast.conf" <<EOF
[provider]
grant = authorization_code
authorize_url = http://127.0.0.1:$2/authorize
token_url = http://127.0.0.1:$2/token
revoke_url = http://127.0.0.1:$2/revoke
client_id = bench
client_secret = bench-secret
max_in_flight = $3
EOF
}
