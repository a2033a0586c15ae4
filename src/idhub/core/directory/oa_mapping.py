"""What DingTalk and WeCom sources share once their answers are read: a department tree of
numeric ids with parents, turned into idhub's department paths, and the DN-shaped key the sync
engine uses to name a member (managers are named by it, as LDAP names them by DN)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OaDepartment:
    id: int
    name: str
    parent: int | None
    order: int = 0


def clean_name(name: str) -> str:
    """A department name as one path segment: "/" would split it, so it becomes "／"."""
    return " ".join(name.replace("/", "／").replace("\\", "＼").split()) or "-"


def department_paths(tree: Mapping[int, OaDepartment]) -> dict[int, str]:
    """id -> "/公司/研发部/平台组". The root (no parent in the tree) is the first segment.
    A department whose parent chain loops or leaves the tree hangs under the root's path."""
    paths: dict[int, str] = {}

    def path_of(dept_id: int, trail: tuple[int, ...] = ()) -> str:
        if dept_id in paths:
            return paths[dept_id]
        dept = tree[dept_id]
        parent = dept.parent
        if parent is None or parent not in tree or parent in trail or parent == dept_id:
            path = "/" + clean_name(dept.name)
        else:
            path = path_of(parent, (*trail, dept_id)) + "/" + clean_name(dept.name)
        paths[dept_id] = path
        return path

    for dept_id in tree:
        path_of(dept_id)
    return paths


def _escape(value: str) -> str:
    for ch in ("\\", ",", "+", ";", "=", '"', "<", ">"):
        value = value.replace(ch, "\\" + ch)
    return value


def member_dn(platform: str, userid: str) -> str:
    """The DN-shaped key of a member ("userid=zhangsan,o=dingtalk"), escaped per RFC 4514."""
    return f"userid={_escape(userid)},o={platform}"
