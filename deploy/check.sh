#!/bin/sh
# Validates the operator files in this folder. Needs promtool (Prometheus) and python3.
# Run from anywhere:  sh deploy/check.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

promtool check rules prometheus/keycap-alerts.yml
promtool test rules prometheus/keycap-alerts.test.yml

# A full `promtool check config` stats the bearer token file, which exists only on the
# Prometheus host (/etc/prometheus/keycap-metrics.token). Check the syntax of the real file,
# then check a copy whose only change is a credentials_file pointing at a placeholder token.
promtool check config --syntax-only prometheus/prometheus.yml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp prometheus/keycap-alerts.yml "$tmp/"
printf 'kcm_placeholder\n' > "$tmp/keycap-metrics.token"
sed "s|/etc/prometheus/keycap-metrics.token|$tmp/keycap-metrics.token|" \
  prometheus/prometheus.yml > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

python3 -m json.tool grafana/keycap.json > /dev/null && echo "grafana/keycap.json: valid JSON"
