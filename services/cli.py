"""The one `mor` command line. Sub-commands import their service lazily so `mor --help` stays fast."""
from __future__ import annotations

import json
import os
import sys

# Spinning OpenMP threads make torch 5-15x slower when anything else runs on a 2-core machine;
# must be set before torch is imported anywhere in the process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from services.common.config import (
    CONFIG_KINDS,
    ConfigError,
    StackConfig,
    build,
    describe_fields,
    load_yaml,
    redacted_dump,
)

if TYPE_CHECKING:  # the heavy torch.distributed side loads only under `orchestrator run|serve`
    from services.orchestrator.parallel import ParallelContext

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="MoR: federated alignment of VLMs with a Mixture of Rewards.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect and validate configuration files.")
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect the synthetic federated VQA world.")
app.add_typer(config_app, name="config")
certs_app = typer.Typer(no_args_is_help=True, help="Make a dev CA, certificates and bearer tokens.")
app.add_typer(data_app, name="data")
app.add_typer(certs_app, name="certs")

console = Console(stderr=True)

# Distinct exit codes, so scripts can tell a bad config from a failed job.
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RUN = 4


def fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _kind(kind: str):
    if kind not in CONFIG_KINDS:
        fail(f"unknown config kind {kind!r}; choose one of {', '.join(CONFIG_KINDS)}", EXIT_CONFIG)
    return CONFIG_KINDS[kind]


def _load_stack(config: Path | None) -> StackConfig:
    try:
        return load_yaml(StackConfig, config) if config else StackConfig()
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        raise  # unreachable; keeps type checkers quiet


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _v

    typer.echo(_v("mor"))


@config_app.command("show")
def config_show(kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}")) -> None:
    """List every field of a config kind with its type, default and description."""
    table = Table(title=f"{kind} config", show_lines=False)
    for col in ("field", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for row in describe_fields(_kind(kind)):
        table.add_row(*row)
    Console().print(table)


@config_app.command("check")
def config_check(
    kind: str = typer.Argument(..., help=f"One of: {', '.join(CONFIG_KINDS)}"),
    path: Path = typer.Argument(..., help="YAML file to validate."),
) -> None:
    """Validate a YAML file (environment overrides applied) and print it with secrets redacted."""
    try:
        cfg = load_yaml(_kind(kind), path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(json.dumps(redacted_dump(cfg), indent=2, default=str))


@data_app.command("make")
def data_make(
    out: Path = typer.Option(Path("data/world"), "--out", "-o", help="Folder to write the world into."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Stack YAML whose `world:` section is used."),
    seed: int | None = typer.Option(None, help="Override world.seed."),
    quick: bool = typer.Option(False, help="Small counts, for smoke tests."),
    force: bool = typer.Option(False, "--force", help="Replace a world already in --out."),
) -> None:
    """Generate the seeded, deterministic federated VQA world (benchmarks, clients, server sets)."""
    from services.common.data.world_writer import make_world
    from services.common.warm_start import world_config

    try:
        cfg = world_config(_load_stack(config).world, seed=seed, quick=quick)
        manifest = make_world(cfg, out, progress=True, overwrite=force)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except FileExistsError as exc:
        fail(str(exc), EXIT_DATA)
    typer.echo(str(manifest))


@data_app.command("info")
def data_info(
    path: Path = typer.Argument(Path("data/world"), help="A world folder, or a dataset: JSONL, parquet, save_to_disk "
                                "folder, folder of split files, VQAv2 questions JSON (docs/data.md)."),
    split: str | None = typer.Option(None, help="Split of a dataset to read (default: test, else train, else the only one)."),
) -> None:
    """Summarise a world (benchmarks, clients, server sets) or an outside dataset (kind, splits, records, images)."""
    from services.common.data.world import WorldFormatError, load_world

    if (path / "manifest.json").is_file():
        from services.common.warm_start import world_summary

        try:
            world = load_world(path)
        except WorldFormatError as exc:
            fail(str(exc), EXIT_DATA)
        Console().print(world_summary(world))
        return
    from services.common.data.sources import DatasetError, describe

    try:
        info = describe(path, split)
    except DatasetError as exc:
        fail(str(exc), EXIT_DATA)
    table = Table(title=f"{info['kind']} dataset {path} ({info['format']})")
    for col in ("split", "records", "answered", "images (files / embedded)", "benchmarks", "columns"):
        table.add_column(col, overflow="fold")
    table.add_row(f"{info['split']} (of {', '.join(info['splits'])})", str(info["records"]),
                  str(info.get("answered", "-")), f"{info['images']['files']} / {info['images']['embedded']}",
                  ", ".join(f"{b} {n}" for b, n in info["benchmarks"].items()), ", ".join(info["columns"]))
    console.print(table)
    typer.echo(json.dumps(info, sort_keys=True))


@certs_app.command("init")
def certs_init(
    directory: Path = typer.Option(Path("runs/local/certs"), "--dir", "-d", help="Folder for ca.pem / ca.key."),
    overwrite: bool = typer.Option(False, help="Replace an existing CA (certificates it signed stop verifying)."),
) -> None:
    """Create a self-signed development CA (kept when one already exists)."""
    from services.common.certs import CertError, init_ca

    try:
        paths = init_ca(directory, overwrite=overwrite)
    except CertError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(f"{paths.cert}\n{paths.key}")


@certs_app.command("issue")
def certs_issue(
    name: str = typer.Argument(..., help="Common name: the node id, 'orchestrator', 'sampler', ..."),
    directory: Path = typer.Option(Path("runs/local/certs"), "--dir", "-d", help="Folder holding the CA."),
    san: list[str] = typer.Option(["127.0.0.1", "localhost"], "--san", help="Host names / IPs clients dial (repeat)."),
    client: bool = typer.Option(False, help="Also valid as a client certificate (mTLS)."),
) -> None:
    """Issue a certificate and key signed by the dev CA."""
    from services.common.certs import CertError, issue

    try:
        paths = issue(directory, name, sans=san, client=client)
    except CertError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(f"{paths.cert}\n{paths.key}")


@certs_app.command("token")
def certs_token(
    caller: str = typer.Argument(..., help="Identity the token stands for (e.g. orchestrator)."),
    server: str | None = typer.Option(None, help="Server whose tokens file accepts it (e.g. clinic)."),
    directory: Path = typer.Option(Path("runs/local/certs"), "--dir", "-d", help="Folder for tokens files."),
) -> None:
    """Issue a bearer token: its digest goes to the server's tokens file, the token to the caller's file."""
    from services.common.certs import CertError, issue_token, token_path

    try:
        issue_token(directory, caller, server=server)
    except CertError as exc:
        fail(str(exc), EXIT_CONFIG)
    typer.echo(str(token_path(directory, caller, server)))


@app.command()
def sft(
    world: Path = typer.Option(Path("data/world"), help="World folder made by `mor data make`."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Train on this VQA dataset instead of the world: JSONL, "
                                     "parquet, save_to_disk folder, folder of split files or VQAv2 JSON (docs/data.md)."),
    split: str | None = typer.Option(None, help="With --data: the split to train on (default: train, else its only split)."),
    eval_split: str | None = typer.Option(None, help="With --data: the split to evaluate on (default: test when the "
                                          "dataset has one, else the training examples)."),
    out: Path = typer.Option(Path("runs/sft"), "--out", "-o", help="Checkpoint folder (HF format) for the warm-started policy."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Stack YAML whose `policy:` and `sft:` sections are used."),
    policy_dir: Path | None = typer.Option(None, "--policy", "-p", help="Start from this local HF checkpoint folder "
                                           "(sets policy.path; docs: README 'Your own model and data')."),
    preset: str | None = typer.Option(None, help="Override policy.preset (tiny, small, ...)."),
    arch: str | None = typer.Option(None, help="Override policy.arch (qwen2_vl, llava)."),
    steps: int | None = typer.Option(None, help="Override sft.steps."),
    finetune: str | None = typer.Option(None, help="Override sft.finetune: auto (LoRA on a checkpoint, full on a "
                                        "preset), lora or full."),
    eval_examples: int = typer.Option(200, help="Held-out examples per benchmark to evaluate."),
) -> None:
    """Supervised warm start: teach a policy the answer format on the world's training split (or a dataset's)."""
    from services.common.data.sources import DatasetError
    from services.common.data.world import WorldFormatError
    from services.common.models.families import CheckpointError
    from services.common.warm_start import result_table, run_sft, run_sft_data

    if data is None and (split or eval_split):
        fail("--split / --eval-split choose splits of --data; a world trains on its own SFT examples", EXIT_CONFIG)
    stack = _load_stack(config)
    overrides = {"preset": preset, "arch": arch, "path": policy_dir}
    sft_overrides = {"steps": steps, "finetune": finetune}
    try:
        policy = build(type(stack.policy), {**stack.policy.model_dump(), **{k: v for k, v in overrides.items() if v}}, "policy")
        sft_cfg = build(type(stack.sft), {**stack.sft.model_dump(), **{k: v for k, v in sft_overrides.items() if v}}, "sft")
        if data is None:
            report = run_sft(world, out, policy, sft_cfg, eval_examples=eval_examples, console=Console())
        else:
            report = run_sft_data(data, out, policy, sft_cfg, split=split, eval_split=eval_split,
                                  eval_examples=eval_examples, console=Console())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except WorldFormatError as exc:
        fail(str(exc), EXIT_DATA)
    except DatasetError as exc:
        fail(f"--data: {exc}", EXIT_DATA)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(f"policy: {exc}", EXIT_DATA)
    Console().print(result_table(report))
    summary = {b: round(r["exact_match"], 4) for b, r in report["after"]["benchmarks"].items()}
    typer.echo(json.dumps({"checkpoint": report["checkpoint"], "exact_match": summary}, sort_keys=True))


stack_app = typer.Typer(no_args_is_help=True, help="The whole system on loopback: nodes, sampler, orchestrator.")
app.add_typer(stack_app, name="stack")


def _stack_up(config: Path, quick: bool) -> None:
    from services.orchestrator.stack import Stack

    stack = _load_stack(config)
    try:
        Stack(stack, quick=quick, console=Console()).up()
    except KeyboardInterrupt:
        fail("interrupted: every service was stopped", 130)
    except (RuntimeError, TimeoutError) as exc:
        fail(str(exc), EXIT_RUN)


@stack_app.command("up")
def stack_up(
    config: Path = typer.Option(Path("examples/local.yaml"), "--config", "-c", help="Stack YAML."),
    quick: bool = typer.Option(False, help="Tiny world, model and run: a smoke run of a few minutes."),
) -> None:
    """World -> SFT -> client RMs -> K reward nodes + sampler + orchestrator as processes -> result table."""
    _stack_up(config, quick)


@app.command()
def demo(
    config: Path = typer.Option(Path("examples/local.yaml"), "--config", "-c", help="Stack YAML."),
    quick: bool = typer.Option(False, help="Tiny model and few steps: a smoke run."),
) -> None:
    """The README demo: `mor stack up` on examples/local.yaml, ending with SFT-vs-MoR results."""
    _stack_up(config, quick)


sampler_app = typer.Typer(no_args_is_help=True, help="The policy sampler: grouped rollouts and versioned weight updates.")
app.add_typer(sampler_app, name="sampler")


@sampler_app.command("serve")
def sampler_serve(
    config: Path = typer.Option(..., "--config", "-c", help="Sampler YAML (see examples/sampler.yaml); MOR_SAMPLER__* env overrides."),
) -> None:
    """Serve the policy over gRPC until SIGTERM/SIGINT (first signal drains, second stops at once)."""
    import asyncio
    import logging

    from services.common.config import SamplerSettings

    try:
        settings = load_yaml(SamplerSettings, config)
        settings.tls.check_files("server")  # before the heavy imports: fail fast, naming the field
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services.policy_sampler.app import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except FileNotFoundError as exc:
        fail(f"model.path: {exc}", EXIT_CONFIG)


reward_node_app = typer.Typer(no_args_is_help=True, help="One organisation's reward node: private RM training and the Score server.")
app.add_typer(reward_node_app, name="reward-node")


def _load_reward_node(config: Path):
    from services.common.config import RewardNodeSettings

    try:
        return load_yaml(RewardNodeSettings, config)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
        raise  # unreachable


@reward_node_app.command("train")
def reward_node_train(
    config: Path = typer.Option(..., "--config", "-c", help="Reward-node YAML (node_id, data_dir, model, train)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Checkpoint folder; default model.checkpoint."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Override data_dir: a world, a client folder, or a preference "
                                     "dataset (TRL prompt/chosen/rejected/images or plain JSONL; docs/data.md)."),
    epochs: int | None = typer.Option(None, help="Override train.epochs."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Train the node's RM (Bradley-Terry) on its own preference pairs; print held-out pair accuracy."""
    from services.reward_node.checkpoint import CheckpointError
    from services.reward_node.data import DataError
    from services.reward_node.train import train_rm

    settings = _load_reward_node(config)
    try:
        if epochs is not None:
            train = {**settings.train.model_dump(), "epochs": epochs}
            settings = build(type(settings), {**settings.model_dump(), "train": train}, "--epochs")
        if data is not None:
            settings = build(type(settings), {**settings.model_dump(), "data_dir": data}, "--data")
        result = train_rm(settings, out_dir=out, progress=not quiet)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except (DataError, CheckpointError) as exc:
        fail(str(exc), EXIT_DATA)
    meta = result.metadata
    table = Table(title=f"reward node {meta['node_id']}: {meta['kind']} RM")
    for col in ("held-out acc", "train acc", "pairs", "score mean/std", "seconds", "version"):
        table.add_column(col)
    table.add_row(f"{meta['held_out_accuracy']:.3f}", f"{meta['train_accuracy']:.3f}",
                  f"{meta['data']['n_train_pairs']}/{meta['data']['n_held_out_pairs']}",
                  f"{meta['score_mean']:.3f}/{meta['score_std']:.3f}", f"{result.seconds:.1f}", meta["model_version"])
    Console(stderr=True).print(table)
    Console(stderr=True).print(competence_table(meta))
    by = {name: {k: round(v["accuracy"], 4) for k, v in groups.items()} for name, groups in meta["held_out_by"].items()}
    typer.echo(json.dumps({"node_id": meta["node_id"], "kind": meta["kind"], "checkpoint": str(result.checkpoint),
                           "held_out_accuracy": round(meta["held_out_accuracy"], 4), "held_out_by": by,
                           "model_version": meta["model_version"]}, sort_keys=True))


def competence_table(meta: dict[str, Any]) -> Table:
    """Held-out pair accuracy (pairs) by pair kind (rows) and benchmark (columns), from RM metadata."""
    by = meta["held_out_by"]
    benchmarks = sorted(by["benchmark"])
    table = Table(title=f"{meta['node_id']}: held-out pair accuracy by kind and benchmark (pairs)")
    for col in ("kind", *benchmarks, "all"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, tot in by["kind"].items():
        cells = [by["kind_benchmark"].get(f"{kind}/{b}") for b in benchmarks]
        table.add_row(kind, *(f"{c['accuracy']:.3f} ({c['pairs']})" if c else "-" for c in cells),
                      f"{tot['accuracy']:.3f} ({tot['pairs']})")
    return table


@reward_node_app.command("serve")
def reward_node_serve(
    config: Path = typer.Option(..., "--config", "-c", help="Reward-node YAML (model.checkpoint, server, tls, auth, ...)."),
) -> None:
    """Serve mor.v1.RewardNode (Score, ScoreBatch, GetInfo, health, reflection) until SIGTERM."""
    import asyncio
    import logging

    from services.common.grpc.interceptors import RequestIdLogFilter
    from services.reward_node.app import build_app

    settings = _load_reward_node(config)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        asyncio.run(build_app(settings).run())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


orchestrator_app = typer.Typer(no_args_is_help=True, help="The orchestrator: MoR runs (fan-out, router, GRPO) and the run-control API.")
app.add_typer(orchestrator_app, name="orchestrator")


def _logging(level: int) -> None:
    import logging

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _hosted_as_worker(ctx: ParallelContext | None) -> bool:
    """Under torchrun, ranks > 0 host their share of the trainer until rank 0 releases them; True then."""
    if ctx is None or ctx.is_main:
        return False
    from services.orchestrator import parallel
    from services.orchestrator.worker import serve_runs

    try:
        serve_runs(ctx)
    finally:
        parallel.shutdown()
    return True


@orchestrator_app.command("run")
def orchestrator_run(
    config: Path = typer.Option(..., "--config", "-c", help="Run YAML (see examples/run.yaml; `mor config show run`)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in output_dir."),
    steps: int | None = typer.Option(None, help="Override grpo.steps."),
    quiet: bool = typer.Option(False, help="No progress bar or per-step rows (JSON summary only)."),
) -> None:
    """Run MoR in the foreground: progress bar, one row per step, checkpoints, final policy."""
    import asyncio
    import logging
    import signal

    from services.common.config import RunConfig
    from services.common.data.sources import DatasetError
    from services.common.data.world import WorldFormatError
    from services.common.errors import MorError
    from services.orchestrator import console as view
    from services.orchestrator.checkpoint import CheckpointError

    try:
        cfg = load_yaml(RunConfig, config)
        if steps is not None:
            cfg = build(RunConfig, {**cfg.model_dump(), "grpo": {**cfg.grpo.model_dump(), "steps": steps}}, "--steps")
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    _logging(logging.WARNING)
    from services.orchestrator import parallel

    # Under torchrun (WORLD_SIZE > 1) every rank runs this command: rank 0 the run, the others host
    # their share of the trainer until rank 0 releases them.
    try:
        ctx = parallel.init_from_env(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if _hosted_as_worker(ctx):
        return
    from services.orchestrator.training_run import MoRRun

    out = Console(stderr=True)
    bar = view.progress(out)
    task = bar.add_task("MoR", total=cfg.grpo.steps)

    def on_step(r):
        if not quiet:
            bar.console.print(view.row(r), highlight=False, markup=False, soft_wrap=True)
        bar.update(task, completed=r.step)

    def on_status(msg: str) -> None:
        if not quiet:
            bar.console.print(f"[green]orchestrator[/] {msg}", highlight=False)

    run = MoRRun(cfg, resume=resume, on_step=on_step, on_status=on_status, parallel=ctx)

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, run.request_stop)
        if not quiet:
            bar.console.print(view.header([n.node_id for n in cfg.nodes]), highlight=False, markup=False, soft_wrap=True)
        return await run.run()

    try:
        if quiet:
            result = asyncio.run(main())
        else:
            with bar:
                result = asyncio.run(main())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    except WorldFormatError as exc:
        fail(f"world: {exc}", EXIT_DATA)
    except DatasetError as exc:
        fail(str(exc), EXIT_DATA)
    except (MorError, OSError, CheckpointError) as exc:
        fail(f"run failed at step {run.step + 1}: {exc}", EXIT_RUN)
    # Released on success only: after a failure rank 0 exits non-zero and torchrun stops the others,
    # which may be inside a collective rank 0 will never join.
    if ctx is not None:
        from services.orchestrator.worker import release_workers

        release_workers()
        parallel.shutdown()
    if not quiet:
        out.print(view.summary(run.records, title=f"MoR run ({cfg.router.kind} router)"))
    typer.echo(json.dumps({"steps_done": result.steps_done, "policy_version": result.policy_version,
                           "stopped": result.stopped, "seconds": round(result.seconds, 2),
                           "output_dir": str(result.output_dir),
                           "final_policy": str(result.final_policy) if result.final_policy else None,
                           "trainer_processes": result.trainer_processes}))


@orchestrator_app.command("serve")
def orchestrator_serve(
    config: Path = typer.Option(..., "--config", "-c", help="Orchestrator YAML (server, tls, auth, metrics, runs_dir)."),
) -> None:
    """Serve the Orchestrator API (StartRun, GetRun, WatchRun, StopRun, nodes) until SIGTERM."""
    import asyncio
    import logging

    from services.common.config import OrchestratorSettings

    try:
        settings = load_yaml(OrchestratorSettings, config)
        settings.tls.check_files("server")
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    _logging(logging.INFO)
    from services.orchestrator import parallel

    # Under torchrun rank 0 serves the API and drives each run's trainer; the other ranks host theirs.
    try:
        t = settings.trainer
        ctx = parallel.init_from_env(t.device, t.backend, t.timeout_s)
        if ctx is not None and settings.max_concurrent_runs != 1:
            raise ConfigError("max_concurrent_runs: must be 1 under torchrun (every rank follows one trainer)")
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if _hosted_as_worker(ctx):
        return
    from services.orchestrator.app import OrchestratorApp

    try:
        asyncio.run(OrchestratorApp(settings, parallel=ctx).run())
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if ctx is not None:
        from services.orchestrator.worker import release_workers

        release_workers()
        parallel.shutdown()


@app.command("eval")
def eval_policy(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy checkpoint folder (HF format: `mor sft` or a run's policy/)."),
    world: Path = typer.Option(Path("data/world"), "--world", "-w", help="World folder made by `mor data make`."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Evaluate on this VQA dataset instead of the world: JSONL, "
                                     "parquet, save_to_disk folder, folder of split files or VQAv2 questions JSON (docs/data.md)."),
    examples: int = typer.Option(200, "--examples", "-n", help="Examples per benchmark (the first N of the split)."),
    split: str | None = typer.Option(None, help="Split to evaluate. A world: test (held out, the default) or train. A "
                                     "dataset: any split it has (default: test, else its only split)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON report to this file."),
    baseline: Path | None = typer.Option(
        None, "--baseline", "-b", help="Also evaluate this policy on the same examples and compare pair by pair: answers "
        "turned right / wrong and the preference change with its paired standard error (e.g. the SFT start of a run)."),
) -> None:
    """Greedy held-out evaluation of a policy: accuracy and format per benchmark, oracle preference per client (JSON).

    On an outside dataset (--data) there is no oracle: accuracy and format only."""
    from services.common.data.records import SPLITS
    from services.common.data.world import WorldFormatError, load_world

    if examples < 1:
        fail(f"--examples must be at least 1 (got {examples})", EXIT_CONFIG)
    if data is None and split is not None and split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)} (got {split!r})", EXIT_CONFIG)
    for option, path in (("--policy", policy), ("--baseline", baseline)):
        if path is not None and not (path / "config.json").is_file():
            fail(f"{option}: {path} is not a policy checkpoint (no config.json)", EXIT_DATA)
    loaded_world = vqa = None
    try:
        if data is None:
            loaded_world = load_world(world)
        else:
            from services.common.data.sources import read_vqa

            vqa = read_vqa(data, split)
            data_examples = vqa.examples("`mor eval`")
    except WorldFormatError as exc:
        fail(f"--world: {exc}", EXIT_DATA)
    except ValueError as exc:  # DatasetError
        fail(f"--data: {exc}", EXIT_DATA)
    split = vqa.split if vqa is not None else (split or "test")
    from services.common.evaluation import evaluate_examples, evaluate_policy, paired_change
    from services.common.models.factory import load_vlm

    def evaluate(option: str, path: Path) -> dict:
        try:
            vlm = load_vlm(path)
        except (OSError, ValueError) as exc:
            fail(f"{option}: cannot load {path}: {exc}", EXIT_DATA)
        if vqa is not None:
            return evaluate_examples(vlm, vqa.images, data_examples, per_benchmark=examples, split=split,
                                     per_example=baseline is not None)
        return evaluate_policy(vlm, loaded_world, per_benchmark=examples, split=split, per_example=baseline is not None)

    source = {"world": str(world)} if vqa is None else {"data": str(data), "format": vqa.format}
    report = {"policy": str(policy), **source, **evaluate("--policy", policy)}
    table = Table(title=f"{policy} on {data or world} ({split} split, greedy)")
    cols = ["benchmark", "n", "exact match", "VQA acc", "format ok"]
    if vqa is None:
        cols[2:2] = ["chance", "blind prior"]
        cols.append("client preference")
    for col in cols:
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for b, row in report["benchmarks"].items():
        cells = [f"{row['exact_match']:.3f}", f"{row['vqa_accuracy']:.3f}", f"{row['format_ok']:.3f}"]
        if vqa is None:
            cells = [f"{row['chance']:.3f}", f"{row['blind']:.3f}", *cells, f"{row['preference']:.3f}"]
        table.add_row(b, str(row["n"]), *cells)
    if vqa is None:
        table.caption = "oracle preference: " + ", ".join(f"{c} {s:.3f}" for c, s in report["client_preference"].items())
    else:
        table.caption = f"{vqa.format} dataset: no preference oracle, accuracy against its reference answers"
    console.print(table)
    if baseline is not None:
        base = evaluate("--baseline", baseline)
        report["baseline"] = {"policy": str(baseline), **base}
        report["paired"] = {b: paired_change(base, report, b) for b in report["benchmarks"]}
        table = Table(title=f"{policy} vs baseline {baseline}, the same {examples} examples per benchmark")
        for col in ("benchmark", "exact match", "turned right / wrong", "preference", "± paired se"):
            table.add_column(col, justify="left" if col == "benchmark" else "right")
        for b, row in report["benchmarks"].items():
            p, s = report["paired"][b], base["benchmarks"][b]
            pref = (f"{s['preference']:.3f} → {row['preference']:.3f}", f"{p['preference_se']:.3f}") if vqa is None else ("-", "-")
            table.add_row(b, f"{s['exact_match']:.3f} → {row['exact_match']:.3f}", f"{p['turned_right']} / {p['turned_wrong']}",
                          *pref)
        console.print(table)
    text = json.dumps(report, indent=2, sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)


def main() -> None:  # pragma: no cover - console entry for `python -m services.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
