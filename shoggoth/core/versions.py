"""The versions of the libraries that decide a result, saved with every output."""

from __future__ import annotations

from importlib.metadata import version

LIBRARIES = ("shoggoth", "sae-lens", "transformer-lens", "transformers", "torch", "datasets")


def library_versions() -> dict[str, str]:
    """{distribution name: installed version} for the libraries in LIBRARIES."""
    return {n: version(n) for n in LIBRARIES}
