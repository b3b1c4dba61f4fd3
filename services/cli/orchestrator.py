"""`mor orchestrator`: a MoR run in the foreground, or the run-control API server; under torchrun the
ranks other than 0 host their share of the trainer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from services.cli.common import EXIT_CONFIG, EXIT_DATA, EXIT_RUN, fail
from services.common.config import ConfigError, build, load_yaml

if TYPE_CHECKING:  # the heavy torch.distributed side loads only under `orchestrator run|serve`
    from services.orchestrator.parallel import ParallelContext

app = typer.Typer(no_args_is_help=True, help="The orchestrator: MoR runs (fan-out, router, GRPO) and the run-control API.")


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


@app.command("run")
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


@app.command("serve")
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
