"""One adapter per service: a webhook's JSON in, one short chat message out (or None).

Adapters only read the payload; what they return is made safe for the protocol by
:func:`fit`, since a commit message or alert annotation may hold anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .template import lookup, render

#: Lines of alerts an Alertmanager message lists before "… and N more".
MAX_ALERT_LINES = 10
DEFAULT_TEMPLATE = "{text}"

#: What the protocol refuses in a text, other than newline and tab (see check_text).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def fit(text: str, max_text: int) -> str:
    """Strip what the protocol refuses (control characters; CRLF becomes LF) and cut to
    ``max_text`` code points with an ellipsis. Empty if nothing is left."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n")).strip()
    if len(text) > max_text:
        text = text[: max_text - 1].rstrip() + "…"
    return text


def _s(document: Any, path: str) -> str:
    value = lookup(document, path)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


# -- GitHub ------------------------------------------------------------------------------------

_CONCLUSIONS = {
    "success": "succeeded",
    "failure": "failed",
    "cancelled": "was cancelled",
    "timed_out": "timed out",
    "action_required": "needs action",
    "skipped": "was skipped",
    "neutral": "finished",
    "stale": "went stale",
    "startup_failure": "failed to start",
}


def github(event: str, payload: Mapping[str, Any]) -> str | None:
    """push, pull_request (opened, closed/merged, reopened), workflow_run (completed) and
    release (published); None for every other event or action."""
    repo = f"[{_s(payload, 'repository.full_name')}]"
    action = _s(payload, "action")
    if event == "push":
        return _push(repo, payload)
    if event == "pull_request":
        if action == "closed":
            verb = "merged" if lookup(payload, "pull_request.merged") else "closed"
        elif action in ("opened", "reopened"):
            verb = action
        else:
            return None
        return (
            f"{repo} {_s(payload, 'sender.login')} {verb} pull request"
            f" #{_s(payload, 'pull_request.number') or _s(payload, 'number')}:"
            f" {_s(payload, 'pull_request.title')} {_s(payload, 'pull_request.html_url')}"
        )
    if event == "workflow_run":
        if action != "completed":
            return None
        name = _s(payload, "workflow_run.name") or _s(payload, "workflow.name")
        conclusion = _s(payload, "workflow_run.conclusion")
        outcome = _CONCLUSIONS.get(conclusion, conclusion or "completed")
        return (
            f"{repo} workflow {name} {outcome} on {_s(payload, 'workflow_run.head_branch')}:"
            f" {_first_line(_s(payload, 'workflow_run.head_commit.message'))}"
            f" {_s(payload, 'workflow_run.html_url')}"
        )
    if event == "release":
        if action != "published":
            return None
        kind = "pre-release" if lookup(payload, "release.prerelease") else "release"
        title = _s(payload, "release.name")
        tag = _s(payload, "release.tag_name")
        named = f"{tag} ({title})" if title and title != tag else tag
        return (
            f"{repo} {_s(payload, 'sender.login')} published {kind} {named}"
            f" {_s(payload, 'release.html_url')}"
        )
    return None


def _push(repo: str, payload: Mapping[str, Any]) -> str:
    ref = _s(payload, "ref")
    kind, name = ("tag", ref[10:]) if ref.startswith("refs/tags/") else ("branch", ref[11:])
    who = _s(payload, "pusher.name") or _s(payload, "sender.login")
    if lookup(payload, "deleted"):
        return f"{repo} {who} deleted {kind} {name}"
    commits = lookup(payload, "commits")
    count = len(commits) if isinstance(commits, list) else 0
    if lookup(payload, "created") and not count:
        return f"{repo} {who} created {kind} {name} {_s(payload, 'compare')}".rstrip()
    forced = " (forced)" if lookup(payload, "forced") else ""
    plural = "commit" if count == 1 else "commits"
    head = _first_line(_s(payload, "head_commit.message"))
    return (
        f"{repo} {who} pushed {count} {plural} to {name}{forced}: {head} {_s(payload, 'compare')}"
    )


# -- Prometheus Alertmanager -------------------------------------------------------------------


def alertmanager(payload: Mapping[str, Any]) -> str | None:
    """``[FIRING:2] InstanceDown`` and a line per alert (its summary or description)."""
    alerts = lookup(payload, "alerts")
    if not isinstance(alerts, list) or not alerts:
        return None
    status = _s(payload, "status") or "firing"
    name = _s(payload, "groupLabels.alertname") or _s(payload, "commonLabels.alertname")
    summary = _s(payload, "commonAnnotations.summary")
    head = f"[{status.upper()}:{len(alerts)}] {name}".rstrip()
    if summary:
        head += f": {summary}"
    lines = [head]
    for alert in alerts[:MAX_ALERT_LINES]:
        labels = lookup(alert, "labels")
        shown = ", ".join(
            f"{k}={v}"
            for k, v in (labels.items() if isinstance(labels, dict) else ())
            if k != "alertname"
        )
        what = _s(alert, "annotations.summary")
        if not what or what == summary:  # said in the head already: the details, if any
            what = _s(alert, "annotations.description")
        line = f"- {_s(alert, 'status') or status} {shown}".rstrip()
        lines.append(f"{line}: {what}" if what else line)
    if len(alerts) > MAX_ALERT_LINES:
        lines.append(f"… and {len(alerts) - MAX_ALERT_LINES} more")
    return "\n".join(lines)


# -- generic JSON ------------------------------------------------------------------------------


def generic(template: str, payload: Any) -> str | None:
    return render(template or DEFAULT_TEMPLATE, payload) or None
