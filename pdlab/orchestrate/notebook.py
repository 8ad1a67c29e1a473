"""Executing pdlab's notebooks with papermill: where they live, which kernel runs them, one execution; and
where a notebook's path parameters point, whatever the kernel's working directory.

A notebook runs with whatever working directory Jupyter or papermill gives its kernel (the repository root,
`notebooks/`, a run directory), so `resolve` anchors relative paths to the pdlab checkout (the directory above
the imported package holding pyproject.toml, params/ and notebooks/), falling back to its notebooks/ directory
for paths written relative to a notebook (`../params/x.yaml`); results go to the checkout's results/. Outside a
checkout (pdlab installed from a wheel) the working directory is the only anchor left."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pdlab
from pdlab.core.errors import PdlabError

COMPARE = "compare.ipynb"
NOTEBOOK = "notebook.ipynb"  # the executed benchmark notebook inside each run directory
KERNEL = "python3"


FALLBACK_KERNEL = "pdlab-python3"


def notebooks_dir() -> Path:
    """Where pdlab's notebooks live: <repo>/notebooks for a source checkout, else pdlab/notebooks."""
    here = Path(pdlab.__file__).resolve().parent
    for cand in (here.parent / "notebooks", here / "notebooks"):
        if (cand / "benchmark.ipynb").exists():
            return cand
    raise PdlabError(f"pdlab's notebooks are missing (looked in {here.parent / 'notebooks'} and {here / 'notebooks'})")


def repo_root() -> Path | None:
    """The source checkout pdlab is imported from (holds params/ and notebooks/), or None for an install."""
    root = Path(pdlab.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() and (root / "params").is_dir():
        return root
    return None


def resolve(path: str | Path) -> Path:
    """A notebook parameter's path: absolute as is; relative against the checkout (or, if only found there,
    its notebooks/ directory); outside a checkout against the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    root = repo_root()
    if root is None:
        return (Path.cwd() / p).resolve()
    for base in (root, root / "notebooks"):
        if (base / p).exists():
            return (base / p).resolve()
    return (root / p).resolve()


def kernel_name() -> str:
    """A Jupyter kernel that runs this interpreter: 'python3' when it resolves to sys.executable (the venv's
    ipykernel), else a 'pdlab-python3' kernelspec installed under sys.prefix for it."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    plain = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    for name in (KERNEL, FALLBACK_KERNEL):
        try:
            argv0 = ksm.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in plain or Path(argv0).resolve() == Path(sys.executable).resolve():
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=FALLBACK_KERNEL, display_name="Python (pdlab)", prefix=sys.prefix)
    return FALLBACK_KERNEL


def execute(notebook: Path, out: Path, parameters: dict[str, Any], *, kernel: str, cwd: Path,
            timeout_s: float | None = None) -> str | None:
    """Execute a notebook with papermill into `out`; None on success, else a one-line error (the executed
    copy, with the error cell, stays at `out`)."""
    import papermill as pm

    try:
        pm.execute_notebook(str(notebook), str(out), parameters=parameters, kernel_name=kernel, cwd=str(cwd),
                            progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                            execution_timeout=int(timeout_s) if timeout_s else None,
                            # CRITICAL: jupyter_client interrupts (SIGINT) every kernel it shuts down, which an
                            # idle ipykernel logs as "ERROR | KeyboardInterrupt caught in kernel" after every
                            # successful notebook; cell errors still reach the executed notebook and the caller.
                            extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except pm.PapermillExecutionError as e:
        return f"{e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''}".strip()
    except Exception as e:  # noqa: BLE001 - kernel died, timeout, …: a failed point, not a failed sweep
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
