"""`lorastudio keys`: API keys for `lorastudio serve` (only their hashes are stored)."""

from __future__ import annotations

from pathlib import Path

import click

_DATA = click.option("--data", "data_dir", default=Path("lorastudio_data"), show_default=True,
                     type=click.Path(file_okay=False, path_type=Path), help="The server's --data folder.")
_DB = click.option("--db", default=None, help="The server's --db URL (default: SQLite under --data).")


def _store(data_dir: Path, db: str | None):
    from lorastudio.serving.store import JobStore, default_url

    data_dir.mkdir(parents=True, exist_ok=True)
    return JobStore(db or default_url(data_dir))


@click.group()
def command() -> None:
    """Create, list and revoke API keys (`Authorization: Bearer KEY`).

    \b
    Scopes: generate (images and jobs), train (trainings, LoRA uploads), admin (everything,
    every key's jobs, /metrics). Each key sees only its own jobs.
      lorastudio keys create --scope generate --name phone-app
      lorastudio keys list
      lorastudio keys revoke 3f2a9c1b7d0e
    """


@command.command("create")
@click.option("--scope", default="generate", show_default=True, help="Comma-separated: generate,train,admin.")
@click.option("--name", default="", help="A label for the key.")
@_DATA
@_DB
def create(scope: str, name: str, data_dir: Path, db: str | None) -> None:
    """Create a key; it is printed once, alone on the last line of stdout."""
    from lorastudio.serving.store import StoreError

    try:
        key_id, token = _store(data_dir, db).create_key([s.strip() for s in scope.split(",") if s.strip()], name)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"key id {key_id}, scopes {scope}; the key is shown once (only its hash is stored):")
    click.echo(token)


@command.command("list")
@_DATA
@_DB
def list_keys(data_dir: Path, db: str | None) -> None:
    """Every key's id, name, scopes and state."""
    for key in _store(data_dir, db).list_keys():
        state = "revoked" if key["revoked"] else "active"
        click.echo(f"{key['id']}  {state:<8} {','.join(key['scopes']):<22} {key['name']}")


@command.command("revoke")
@click.argument("key_id")
@_DATA
@_DB
def revoke(key_id: str, data_dir: Path, db: str | None) -> None:
    """Revoke a key by its id; requests with it get 401 from then on."""
    if not _store(data_dir, db).revoke_key(key_id):
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")
