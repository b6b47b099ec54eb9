"""``mouthmap images build|base|list``: a thin edge over :mod:`mouthmap.images`."""

from __future__ import annotations

from pathlib import Path

import typer

images_app = typer.Typer(
    help="The container images (pipeline, proxy, triton-cpu), built here with Docker.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@images_app.command("build")
def build_cmd(
    target: list[str] = typer.Option(None, "--target", "-t", help="only this target (repeatable)"),
    base: str = typer.Option("auto", help="auto | public (python:3.11-slim) | debian (made here)"),
    no_cache: bool = typer.Option(False, help="rebuild every layer"),
    log_dir: Path = typer.Option(Path("runs/images"), help="one build log per target"),
) -> None:
    """Build the images, tagged VERSION and VERSION-COMMIT; print each one's time and size."""
    from mouthmap import images

    try:
        built = images.build_all(target or list(images.TARGETS), base, no_cache=no_cache,
                                 log_dir=log_dir, echo=typer.echo)  # fmt: skip
    except images.ImageError as e:
        _fail(str(e))
    typer.echo("")
    typer.echo(f"{'target':<12} {'seconds':>8} {'MB':>7}  tags")
    for b in built:
        typer.echo(f"{b.target:<12} {b.seconds:8.0f} {b.size_mb:7.0f}  {' '.join(b.tags)}")


@images_app.command("base")
def base_cmd(
    mirror: str = typer.Option(None, help="Debian mirror (default: this machine's apt source)"),
) -> None:
    """(Re)make the Python base from Debian packages (debootstrap; needs root)."""
    from mouthmap import images

    try:
        images.require_daemon()
        images.make_debian_base(mirror, echo=typer.echo)
    except images.ImageError as e:
        _fail(str(e))


@images_app.command("list")
def list_cmd() -> None:
    """The project's images on this machine."""
    from mouthmap import images

    try:
        rows = images.listing()
    except images.ImageError as e:
        _fail(str(e))
    for r in rows:
        typer.echo(f"{r['image']:<48} {r['size']:>9}  {r['created']}")
