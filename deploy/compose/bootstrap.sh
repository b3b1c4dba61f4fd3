#!/bin/sh
# One-shot set-up of the compose demo (service `bootstrap`, image mor-cli, run as root once):
#   1. the synthetic federated world (`mor data make`),
#   2. a dev PKI with `mor certs`: a CA, a server+client certificate per service, and the bearer
#      tokens each reward node issues to the orchestrator (and the orchestrator to the operator),
#   3. each organisation's private volume: its own preference pairs, the images they use, its
#      certificate, key and token digests -- nothing of the other organisations,
#   4. the server volumes: the server-side prompt pool and router pairs (no client data), a
#      policy warm-started by `mor sft`; the server certificates and node tokens.
# It does nothing when the server volume already holds a finished bootstrap. Stands in for what
# each organisation and the operator do on their own machines in a real deployment.
set -eu
NODES="${MOR_NODES:-clinic bank school}"
SERVER=/out/server
SERVER_CERTS=/out/server-certs
if [ -f "$SERVER/.bootstrap-done" ]; then
  echo "bootstrap: already done ($SERVER/.bootstrap-done)"; exit 0
fi
WORLD=/tmp/world
echo "bootstrap: world (seed ${MOR_SEED:-0})"
mor data make --out "$WORLD" --seed "${MOR_SEED:-0}" ${MOR_WORLD_ARGS:---quick} --force >/dev/null

echo "bootstrap: PKI in the pki volume (the CA key stays there)"
PKI=/pki
mor certs init --dir "$PKI" >/dev/null
for n in $NODES; do
  mor certs issue "$n" --client --san "$n" --san localhost --san 127.0.0.1 --dir "$PKI" >/dev/null
  mor certs token orchestrator --server "$n" --dir "$PKI" >/dev/null
done
for s in orchestrator sampler; do
  mor certs issue "$s" --client --san "$s" --san localhost --san 127.0.0.1 --dir "$PKI" >/dev/null
done
mor certs issue operator --client --san operator --dir "$PKI" >/dev/null
mor certs token operator --server orchestrator --dir "$PKI" >/dev/null

echo "bootstrap: each organisation's private volume"
for n in $NODES; do
  d="/out/data-$n"; c="/out/certs-$n"
  mkdir -p "$d" "$c"
  cp "$PKI/ca.pem" "$PKI/$n.pem" "$PKI/$n.key" "$PKI/$n-tokens.yaml" "$c/"
  python - "$WORLD" "$d/world" "$n" <<'PY'
import json, shutil, sys
from pathlib import Path
world, out, node = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
src = world / "clients" / node
shutil.copytree(src, out / "clients" / node, dirs_exist_ok=True)
images = set()
for split in ("train", "test"):
    for line in (src / f"prefs_{split}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("image"):
            images.add(rec["image"])
for rel in sorted(images):
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(world / rel, out / rel)
print(f"  {node}: {sum(1 for _ in (src / 'prefs_train.jsonl').open())} train pairs, {len(images)} images")
PY
done

echo "bootstrap: server volume (prompt pool, router pairs, certificates, node tokens)"
mkdir -p "$SERVER_CERTS" "$SERVER/runs"
rm -rf "$SERVER/world"
mkdir -p "$SERVER/world"
for part in manifest.json images benchmarks server; do cp -r "$WORLD/$part" "$SERVER/world/"; done
cp "$PKI/ca.pem" "$PKI"/orchestrator.* "$PKI"/sampler.* "$PKI"/operator.* "$PKI"/orchestrator-to-*.token \
   "$PKI/operator-to-orchestrator.token" "$PKI/orchestrator-tokens.yaml" "$SERVER_CERTS/"

echo "bootstrap: warm-start the policy (mor sft, preset ${MOR_POLICY_PRESET:-tiny})"
mor sft --world "$WORLD" --preset "${MOR_POLICY_PRESET:-tiny}" --steps "${MOR_SFT_STEPS:-40}" \
  --eval-examples 10 --out "$SERVER/policy" | tail -1

for v in /out/*; do chown -R 10001:10001 "$v"; done
touch "$SERVER/.bootstrap-done"
echo "bootstrap: done"
