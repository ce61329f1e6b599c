#!/usr/bin/env bash
# Runs the README's quickstart on a clean checkout, exactly as written, with podman containers
# standing in for a cluster's, and checks that their logs and metrics are queryable through
# `wake logs`, `wake sql`, the Loki API and the Prometheus API.
#
#   scripts/quickstart-check.sh            # checks HEAD of this repository
#
# Needs root (podman, and the agent reads /var/lib/containers/storage), podman + runc +
# busybox-static (scripts/test.sh installs them), and ports 4317, 4318, 4380 and 4390 free.
# The README's command is a release build; CARGO_TARGET_DIR (default
# /var/tmp/wake-target-release) keeps it between runs.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/wake-target-release}"

work="$(mktemp -d)"
wake_pid=""
containers=()
cleanup() {
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
    if [ -n "$wake_pid" ]; then kill -TERM "$wake_pid" 2>/dev/null || true; wait "$wake_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "quickstart-check: FAILED: $*" >&2; echo "--- wake output:" >&2; tail -n 40 "$work/wake.log" >&2 || true; exit 1; }

git clone -q "$repo" "$work/wake"
cd "$work/wake"

# The README's first command, as written: the first ```sh block under "## Run it".
command="$(awk '/^## Run it/{f=1} f&&/^```sh/{getline; print; exit}' README.md)"
[ -n "$command" ] || fail "no command found under '## Run it' in README.md"
echo "quickstart-check: running the README's command: $command"
bash -c "$command" >"$work/wake.log" 2>&1 &
wake_pid=$!

# A release build may take a while on a cold machine.
for _ in $(seq 1 3600); do
    if curl -sf localhost:4380/readyz >/dev/null 2>&1 && grep -q "Wake is running" "$work/wake.log"; then break; fi
    kill -0 "$wake_pid" 2>/dev/null || fail "wake exited before it was ready"
    sleep 1
done
curl -sf localhost:4380/readyz >/dev/null || fail "wake did not become ready"
grep -q "Grafana:" "$work/wake.log" || fail "the banner does not say where to point Grafana"

# Podman containers stand in for a cluster's: a busybox image imported from busybox-static.
# Some sandboxes (this project's CI among them) refuse podman's default ulimits; an empty list
# changes nothing else.
printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
image=localhost/wake-quickstart-busybox
if ! podman image exists "$image"; then
    rootfs="$work/rootfs"; mkdir -p "$rootfs/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    for tool in sh echo sleep seq; do ln -s busybox "$rootfs/bin/$tool"; done
    tar -C "$rootfs" -c . | podman import - "$image" >/dev/null
fi
marker="quickstart-$$-$RANDOM"
for name in shop-web shop-worker; do
    containers+=("$name-$marker")
    podman run -d --log-driver k8s-file --name "$name-$marker" "$image" \
        sh -c "for i in \$(seq 1 5); do echo \"$marker $name line \$i\"; echo \"$marker $name error \$i\" >&2; done; sleep 30" >/dev/null
done

wake=("$CARGO_TARGET_DIR/release/wake")
deadline=$((SECONDS + 60))
until [ "$("${wake[@]}" sql --format csv "SELECT count(*) FROM logs WHERE body LIKE '$marker%'" | tail -n 1)" = "20" ]; do
    [ $SECONDS -lt $deadline ] || fail "wake sql did not see the containers' 20 lines"
    sleep 1
done
echo "quickstart-check: wake sql sees all 20 lines"

"${wake[@]}" logs --since 10m "$marker error" | grep -q "$marker shop-worker error 3" || fail "wake logs did not find the lines"
echo "quickstart-check: wake logs finds them"

loki="$(curl -sfG localhost:4380/loki/api/v1/query_range --data-urlencode "query={container_id=~\".+\"} |= \"$marker\"" --data-urlencode limit=100)"
# (The marker is in the containers' names, so in the stream labels too: count the lines alone.)
[ "$(grep -oE "\"$marker shop-(web|worker) (line|error) [0-9]\"" <<<"$loki" | wc -l)" = "20" ] \
    || fail "the Loki API did not answer the 20 lines: $loki"
echo "quickstart-check: the Loki API answers them"

deadline=$((SECONDS + 60))
until curl -sfG localhost:4380/api/v1/query --data-urlencode "query=container_memory_working_set_bytes{container_id=~\".+\"}" | grep -q '"value"'; do
    [ $SECONDS -lt $deadline ] || fail "the Prometheus API has no container memory"
    sleep 2
done
echo "quickstart-check: the Prometheus API answers container_memory_working_set_bytes"
echo "quickstart-check: OK"
