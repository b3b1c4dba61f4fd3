#!/usr/bin/env bash
# Build the MoR images and run the compose stack under podman, end to end; then tear it all down.
# For machines with no Docker daemon and no container registry (run as root):
#
#   deploy/test-images.sh                     # everything below, ~10-20 min on 2 cores
#   KEEP=1 deploy/test-images.sh              # leave the stack running (podman-compose -p mor-e2e down -v)
#   pytest -m containers tests/deploy         # the same, from the test suite
#
#   1. base image: `debootstrap --variant=minbase --include=python3,python3-venv bookworm`, imported
#      with `podman import` as localhost/mor-base:bookworm (cached in $MOR_IMAGE_CACHE);
#   2. the MoR images: deploy/docker/build.sh with that base (offline build from a wheelhouse that
#      pip resolves here, CPU torch included);
#   3. a Prometheus image made from Debian's prometheus binary on that base (no Docker Hub here);
#   4. deploy/compose/docker-compose.yml with podman-compose: bootstrap (world, PKI, private volumes,
#      SFT policy), 3 reward nodes, sampler, orchestrator, Prometheus; waits for every grpc.health.v1
#      check; runs `submit` (a short MoR run over mTLS); checks that Prometheus scrapes every service
#      and saw the run's Score, Generate and GRPO-step counters;
#   5. `down -v`: containers, network and volumes removed (unless KEEP=1).
# Grafana is not started: its image comes only from Docker Hub. The last line printed is one JSON
# object with image sizes, build and run times and the run's result. Exit 0 only when all checks pass.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${MOR_IMAGE_CACHE:-/var/tmp/mor-images}"
PROJECT="${PROJECT:-mor-e2e}"
TAG="${TAG:-e2e}"
NICE="${NICE:-nice -n 10}"
mkdir -p "$CACHE"
LOG="$CACHE/test-images.log"
: >"$LOG"
say() { echo "[test-images $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
die() { say "FAILED: $*"; exit 1; }
now() { date +%s; }
T0=$(now)

# ---- prerequisites -------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "run as root (rootful podman; debootstrap)"
need_pkgs=()
for pair in podman:podman runc:runc debootstrap:debootstrap prometheus:prometheus dnsmasq:dnsmasq-base; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
[ -x /usr/lib/cni/dnsname ] || need_pkgs+=(golang-github-containernetworking-plugin-dnsname)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } >>"$LOG" 2>&1 \
    || die "apt-get install ${need_pkgs[*]} (see $LOG)"
fi
# No systemd here: cgroupfs, no default ulimits, events to a file.
export CONTAINERS_CONF="$CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
PODMAN="podman --runtime runc"
COMPOSE_BIN="$CACHE/tools/bin/podman-compose"
if [ ! -x "$COMPOSE_BIN" ]; then
  say "installing podman-compose into $CACHE/tools"
  python3 -m venv "$CACHE/tools" >>"$LOG" 2>&1
  "$CACHE/tools/bin/pip" install -q "podman-compose==1.6.0" >>"$LOG" 2>&1 || die "pip install podman-compose"
fi

# ---- 1. base image -------------------------------------------------------------------------
BASE=localhost/mor-base:bookworm
base_s=0
if ! $PODMAN image exists "$BASE"; then
  mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
  [ -n "$mirror" ] || mirror="$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$mirror" ] || die "no Debian mirror found in the apt sources; set DEBIAN_MIRROR"
  say "debootstrap bookworm minbase + python3 (mirror from apt sources)"
  start=$(now)
  rm -rf "$CACHE/rootfs"
  $NICE debootstrap --variant=minbase --include=python3,python3-venv bookworm "$CACHE/rootfs" "$mirror" >>"$LOG" 2>&1 \
    || die "debootstrap (see $LOG)"
  rm -rf "$CACHE"/rootfs/var/cache/apt/archives/*.deb "$CACHE"/rootfs/var/lib/apt/lists/*
  tar -C "$CACHE/rootfs" -c . | $PODMAN import - "$BASE" >>"$LOG" 2>&1 || die "podman import"
  base_s=$(( $(now) - start ))
fi

# ---- 2. MoR images -------------------------------------------------------------------------
say "building the MoR images (deploy/docker/build.sh, base $BASE)"
start=$(now)
$NICE env ENGINE="$PODMAN" BASE_IMAGE="$BASE" TAG="$TAG" deploy/docker/build.sh >>"$LOG" 2>&1 || die "image build (see $LOG)"
build_s=$(( $(now) - start ))
grep -E '^(==|   )' "$LOG" | tail -12 >&2 || true

# ---- 3. Prometheus image -------------------------------------------------------------------
PROM_IMAGE=localhost/mor-prometheus:local
if ! $PODMAN image exists "$PROM_IMAGE"; then
  ctx="$(mktemp -d)"
  cp "$(command -v prometheus)" "$ctx/prometheus"
  cat >"$ctx/Containerfile" <<EOF
FROM $BASE
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 65534:65534 /prometheus
USER 65534:65534
ENTRYPOINT ["/bin/prometheus"]
EOF
  $PODMAN build --format docker --network none -t "$PROM_IMAGE" "$ctx" >>"$LOG" 2>&1 || die "prometheus image"
  rm -rf "$ctx"
fi

# ---- 4. the compose stack ------------------------------------------------------------------
PROM_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export MOR_TAG="$TAG" PROMETHEUS_IMAGE="$PROM_IMAGE" PROMETHEUS_PORT="$PROM_PORT"
compose() { $NICE "$COMPOSE_BIN" --podman-args="--runtime runc" -p "$PROJECT" -f deploy/compose/docker-compose.yml "$@"; }
teardown() {
  if [ "${KEEP:-0}" = 1 ]; then say "KEEP=1: stack left running (project $PROJECT)"; return; fi
  say "tearing down (containers, network, volumes)"
  compose --profile run down -v >>"$LOG" 2>&1 || true
}
trap teardown EXIT
compose --profile run down -v >>"$LOG" 2>&1 || true

container() {  # the container of a compose service
  $PODMAN ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}

say "compose: bootstrap (world, PKI, private volumes, SFT policy)"
start=$(now)
compose up -d bootstrap >>"$LOG" 2>&1 || die "compose up bootstrap"
rc="$($PODMAN wait "$(container bootstrap)")"
$PODMAN logs "$(container bootstrap)" >>"$LOG" 2>&1 || true
[ "$rc" = 0 ] || die "bootstrap exited $rc (see $LOG)"
bootstrap_s=$(( $(now) - start ))

say "compose: reward nodes (train on their own data, then serve), sampler, orchestrator, prometheus"
start=$(now)
compose up -d clinic bank school sampler orchestrator prometheus >>"$LOG" 2>&1 || die "compose up"
for svc in clinic bank school sampler orchestrator; do
  name="$(container "$svc")"
  [ -n "$name" ] || die "no container for service $svc"
  deadline=$(( $(now) + ${HEALTH_TIMEOUT_S:-900} ))
  # podman without systemd runs no health-check timers: run the service's own check until it passes.
  until $PODMAN healthcheck run "$name" >/dev/null 2>&1; do
    state="$($PODMAN inspect -f '{{.State.Status}}' "$name")"
    if [ "$state" != running ] || [ "$(now)" -gt "$deadline" ]; then
      $PODMAN logs --tail 50 "$name" >>"$LOG" 2>&1 || true
      die "$svc never became healthy (state $state; see $LOG)"
    fi
    sleep 3
  done
  say "  $svc healthy (grpc.health.v1 SERVING)"
done
healthy_s=$(( $(now) - start ))

say "compose: submit (StartRun config/run.yaml, follow WatchRun to the end)"
start=$(now)
set +e
run_out="$(compose --profile run run --rm submit 2>>"$LOG")"
run_rc=$?
set -e
echo "$run_out" >>"$LOG"
echo "$run_out" | grep -E '^(step|submit-run)' >&2 || true
run_json="$(echo "$run_out" | grep -E '^\{' | tail -1)"
run_s=$(( $(now) - start ))
[ "$run_rc" = 0 ] || { for s in orchestrator sampler clinic; do $PODMAN logs --tail 80 "$(container $s)" >>"$LOG" 2>&1 || true; done;
                      die "the MoR run did not complete (rc $run_rc): ${run_json:-no summary} (see $LOG)"; }

say "checking Prometheus (127.0.0.1:$PROM_PORT) scraped every service"
sleep 6  # a last scrape after the run's final step
prom_json="$(python3 - "$PROM_PORT" <<'PY'
import json, sys, urllib.parse, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/api/v1/query?query="
def q(expr):
    with urllib.request.urlopen(base + urllib.parse.quote(expr), timeout=10) as r:
        return json.loads(r.read())["data"]["result"]
up = {f"{s['metric']['job']}/{s['metric'].get('node_id', s['metric']['instance'])}": float(s["value"][1])
      for s in q('up{job=~"mor-.*"}')}
score = {s["metric"]["node_id"]: float(s["value"][1])
         for s in q('sum by (node_id) (mor_grpc_server_requests_total{job="mor-reward-node",method=~"Score|ScoreBatch",code="OK"})')}
gen = q('sum(mor_grpc_server_requests_total{job="mor-sampler",method="Generate",code="OK"})')
steps = q('sum(mor_orchestrator_grpo_steps_total{job="mor-orchestrator"})')
rules = q('count({__name__=~"mor:.+"})')
print(json.dumps({"up": up, "score_calls_ok": score, "generate_calls_ok": float(gen[0]["value"][1]) if gen else 0.0,
                  "grpo_steps": float(steps[0]["value"][1]) if steps else 0.0,
                  "recorded_series": float(rules[0]["value"][1]) if rules else 0.0}))
PY
)" || die "querying Prometheus"
say "  $prom_json"
python3 - "$prom_json" <<'PY' || die "Prometheus checks"
import json, sys
p = json.loads(sys.argv[1])
want = {"mor-reward-node/clinic", "mor-reward-node/bank", "mor-reward-node/school"}
assert want <= set(p["up"]), f"reward nodes missing from up: {p['up']}"
assert any(k.startswith("mor-sampler/") for k in p["up"]) and any(k.startswith("mor-orchestrator/") for k in p["up"]), p["up"]
assert all(v == 1.0 for v in p["up"].values()), f"a target is down: {p['up']}"
assert set(p["score_calls_ok"]) >= {"clinic", "bank", "school"} and min(p["score_calls_ok"].values()) > 0, p["score_calls_ok"]
assert p["generate_calls_ok"] > 0, "the sampler served no Generate call"
assert p["grpo_steps"] > 0, "no GRPO step counted by the orchestrator"
PY

# ---- summary -------------------------------------------------------------------------------
sizes="$($PODMAN images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "mor-(cli|reward-node|sampler|orchestrator):$TAG|mor-base|mor-prometheus" | sort)"
say "images:"; echo "$sizes" | sed 's/^/    /' >&2
layers_mb="$($PODMAN image inspect "localhost/mor-reward-node:$TAG" --format '{{.Size}}' | awk '{printf "%.0f", $1/1e6}')"
python3 - <<PY
import json
print(json.dumps({
    "result": "ok", "base_image_s": $base_s, "build_s": $build_s, "bootstrap_s": $bootstrap_s,
    "nodes_sampler_orchestrator_healthy_s": $healthy_s, "mor_run_s": $run_s, "total_s": $(( $(now) - T0 )),
    "image_mb": $layers_mb, "images": """$sizes""".splitlines(),
    "run": json.loads('''$run_json'''), "prometheus": json.loads('''$prom_json'''),
}))
PY
