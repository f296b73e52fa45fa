"""Run the USD validators that Apple and NVIDIA tools use, and return their complaints as plain strings.

``compliance_problems`` wraps ``UsdUtils.ComplianceChecker`` (usd-core up to 26.5 ships it; 26.8 dropped
it), ``nvidia_problems`` the ``usd-validation-nvidia`` engine with its default rules. Both return an
empty list for a clean file, so tests can ``assert not problems`` and print what failed.
"""

from __future__ import annotations

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
