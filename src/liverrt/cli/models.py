"""``liverrt models``."""

from __future__ import annotations

import click

from liverrt.models.bundled import DEFAULT, bundled_model, bundled_models


@click.command()
@click.argument("name", required=False)
def models(name: str | None) -> None:
    """List the bundled liver models and print their cards (training data and licences, metrics, speed).

    Without NAME: the list, then the default model's card.
    """
    available = bundled_models()
    if name is None:
        for m in available:
            click.echo(f"{m.name}{' (default)' if m.name == DEFAULT else ''}: {m.card['summary']} [{m.path}]")
        if not available:
            click.echo("no bundled model in this installation")
            return
        click.echo("")
    click.echo(bundled_model(name).card_markdown())
