"""Run the USD validators that Apple and NVIDIA tools use, and return their complaints as plain strings.

``compliance_problems`` wraps ``UsdUtils.ComplianceChecker`` (usd-core up to 26.5 ships it; 26.8 dropped
it), ``nvidia_problems`` the ``usd-validation-nvidia`` engine with its default rules. Both return an
empty list for a clean file, so tests can ``assert not problems`` and print what failed.
``gltf_problems`` does the same for ``.glb``/``.gltf`` with the Khronos glTF validator (run by Node).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path


def compliance_problems(path: str | Path, arkit: bool = False, include_warnings: bool = False) -> list[str]:
    """Errors and failed checks from ``UsdUtils.ComplianceChecker`` (``arkit=True`` adds Apple's rules)."""
    from pxr import UsdUtils

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        checker = UsdUtils.ComplianceChecker(arkit=arkit, skipARKitRootLayerCheck=False, rootPackageOnly=False,
                                             skipVariants=False, verbose=False)
        checker.CheckCompliance(str(path))
    problems = [f"error: {e}" for e in checker.GetErrors()]
    problems += [f"failed: {f}" for f in checker.GetFailedChecks()]
    if include_warnings:
        problems += [f"warning: {w}" for w in checker.GetWarnings()]
    return problems


def nvidia_available() -> bool:
    try:
        import usd_validation_nvidia  # noqa: F401
    except ImportError:
        return False
    return True


def nvidia_problems(path: str | Path, min_severity: str = "WARNING") -> list[str]:
    """Issues of ``min_severity`` or worse (INFO < WARNING < FAILURE < ERROR) from usd-validation-nvidia."""
    import usd_validation_nvidia as nv

    order = ["INFO", "WARNING", "FAILURE", "ERROR"]
    if min_severity not in order:
        raise ValueError(f"min_severity must be one of {order}, not {min_severity!r}")
    floor = order.index(min_severity)
    engine = nv.ValidationEngine()
    results = engine.validate(str(path))
    problems = []
    for issue in results.issues():
        severity = getattr(issue.severity, "name", str(issue.severity))
        if severity in order and order.index(severity) < floor:
            continue
        where = f" at {issue.at}" if getattr(issue, "at", None) is not None else ""
        rule = getattr(issue.rule, "__name__", "") if getattr(issue, "rule", None) is not None else ""
        problems.append(f"{severity.lower()}: [{rule}] {issue.message}{where}")
    return problems


def validate_asset(path: str | Path, arkit: bool | None = None, nvidia: bool = True) -> list[str]:
    """Every problem either validator finds; ``arkit`` defaults to True for ``.usdz`` packages."""
    path = Path(path)
    if arkit is None:
        arkit = path.suffix == ".usdz"
    problems = compliance_problems(path, arkit=False)
    if arkit:
        problems += [f"arkit {p}" for p in compliance_problems(path, arkit=True)]
    if nvidia and nvidia_available():
        problems += [f"nvidia {p}" for p in nvidia_problems(path)]
    return problems


# The Khronos glTF validator is a Dart program shipped to npm compiled to JS (package ``gltf-validator``);
# ``scripts/gltf_validate.mjs`` runs it on one file and prints its report as JSON. ``.ci/run`` installs
# the pinned version into ``.ci/node`` (git-ignored); ``MAGIC3D_GLTF_VALIDATOR`` names another folder.
GLTF_VALIDATOR_ENV = "MAGIC3D_GLTF_VALIDATOR"
_REPO = Path(__file__).resolve().parents[1]
_GLTF_SCRIPT = _REPO / "scripts" / "gltf_validate.mjs"


class GltfValidatorMissing(RuntimeError):
    """Node or the ``gltf-validator`` npm package is not installed where the wrapper looks."""


def gltf_validator_dir() -> Path:
    """The ``gltf-validator`` package folder: ``$MAGIC3D_GLTF_VALIDATOR`` or ``.ci/node/node_modules/gltf-validator``."""
    override = os.environ.get(GLTF_VALIDATOR_ENV)
    return Path(override) if override else _REPO / ".ci" / "node" / "node_modules" / "gltf-validator"


def gltf_validator_available() -> bool:
    return shutil.which("node") is not None and (gltf_validator_dir() / "package.json").is_file() and _GLTF_SCRIPT.is_file()


def gltf_report(path: str | Path, timeout: float = 120.0) -> dict:
    """The validator's report of a ``.glb``/``.gltf``: ``numErrors``, ``numWarnings``, ``numInfos``, ``numHints``
    and ``messages`` (``code``, ``severity`` 0 error .. 3 hint, ``message``, ``pointer``)."""
    node = shutil.which("node")
    if node is None or not gltf_validator_available():
        raise GltfValidatorMissing(
            f"the glTF validator needs Node and the npm package gltf-validator in {gltf_validator_dir()}; "
            f"run .ci/run's install line (npm install --prefix .ci/node gltf-validator) or set {GLTF_VALIDATOR_ENV}."
        )
    env = {**os.environ, GLTF_VALIDATOR_ENV: str(gltf_validator_dir())}
    done = subprocess.run([node, str(_GLTF_SCRIPT), str(path)], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode == 3:
        raise GltfValidatorMissing(done.stderr.strip())
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        return {"numErrors": 1, "numWarnings": 0, "numInfos": 0, "numHints": 0,
                "messages": [{"code": "UNREADABLE", "severity": 0, "message": message, "pointer": ""}]}
    return json.loads(done.stdout)


def gltf_problems(path: str | Path, include_infos: bool = False) -> list[str]:
    """Errors and warnings (``include_infos`` adds infos) the Khronos glTF validator reports, as
    ``"error: [CODE] message at /pointer"``; a file that is not glTF at all is one ``UNREADABLE`` error.
    Raises ``GltfValidatorMissing`` when Node or the package is not installed."""
    names = {0: "error", 1: "warning", 2: "info", 3: "hint"}
    floor = 2 if include_infos else 1
    problems = []
    for issue in gltf_report(path)["messages"]:
        if issue["severity"] > floor:
            continue
        where = f" at {issue['pointer']}" if issue.get("pointer") else ""
        problems.append(f"{names.get(issue['severity'], 'issue')}: [{issue['code']}] {issue['message']}{where}")
    return problems
