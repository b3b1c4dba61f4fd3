"""Who may change which reward node in the registry (RegisterNode, RemoveNode).

The auth interceptor has already decided who the caller is (certificate and token agreeing) and
that the method allows it. What it cannot see is the request: an organisation's node_id. This rule
does: an operator may register, update and remove any node; any other caller only the node whose
node_id is its own identity. Without a caller identity (auth off: plaintext demos and tests) the
rule does not apply.
"""
from __future__ import annotations

from collections.abc import Collection

from services.common.errors import PermissionDenied

MAX_SHOWN_CHARS = 64


def _shown(value: str) -> str:
    return repr(value[:MAX_SHOWN_CHARS]) + ("..." if len(value) > MAX_SHOWN_CHARS else "")


def check_node_owner(caller: str | None, node_id: str, operators: Collection[str] | None, action: str) -> None:
    """Raise PermissionDenied unless `caller` may `action` ("register", "remove") node `node_id`.

    `operators` None means every authenticated caller is an operator. Messages are bounded: the
    node_id comes from the request."""
    if caller is None or operators is None or caller in operators or caller == node_id:
        return
    raise PermissionDenied(
        f"caller {_shown(caller)} may {action} only its own node (node_id {_shown(caller)}), not {_shown(node_id)}; "
        "other nodes need an operator identity",
        reason="NOT_NODE_OWNER",
    )


__all__ = ["check_node_owner"]
