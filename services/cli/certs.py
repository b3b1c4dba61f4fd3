"""`mor certs`: a development CA, certificates signed by it, and bearer tokens."""
from __future__ import annotations

from pathlib import Path

import typer

from services.cli.common import EXIT_CONFIG, fail

app = typer.Typer(no_args_is_help=True, help="Make a dev CA, certificates and bearer tokens.")


@app.command("init")
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


@app.command("issue")
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


@app.command("token")
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
