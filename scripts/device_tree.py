"""What a call of the device tool (a lent GPU) would send, and how to send less: it takes at most 64 MiB.

A call copies the checkout's tracked files, its untracked files that git does not ignore, and the ignored paths it
is told to carry. The shipped checkpoints and figures alone are about 95 MB, so a GPU call must leave them behind
and carry back in only what the command reads:

    python scripts/device_faces.py pack --data data --out .devdata            # the faces, ~57 MiB
    python scripts/device_tree.py hide                                        # checkpoints/ and docs/ stay here
    python scripts/device_tree.py size --carry .devdata checkpoints/smiling_classifier   # must be < 64 MiB
    # device calls, carry=[".devdata", "checkpoints/smiling_classifier"]
    python scripts/device_tree.py restore                                     # `git status` as before `hide`

`hide` untracks the paths in git's index only (`git rm --cached`) and ignores them in .git/info/exclude: the files
stay on disk and nothing is committed. A commit between `hide` and `restore` would delete them from the project, so
`hide` also installs a pre-commit hook that refuses every commit until `restore` (which puts back any hook that was
there before).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 2**20  # bytes: the device tool's limit on the working tree that travels, carried paths included
HIDDEN = ("checkpoints", "docs")
MARK = "# dlcv device_tree hide"  # opens and closes the block that `hide` appends to .git/info/exclude
SAVED_HOOK = "pre-commit.before-device-tree-hide"  # a pre-commit hook that was there before `hide`


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _exclude_file(repo: Path) -> Path:
    return repo / _git(repo, "rev-parse", "--git-path", "info/exclude").strip()


def _hook(repo: Path, name: str = "pre-commit") -> Path:
    return repo / _git(repo, "rev-parse", "--git-path", f"hooks/{name}").strip()


def _guard_commits(repo: Path, paths: tuple[str, ...] | list[str]) -> None:
    """While hidden, the index no longer holds `paths`: a commit would delete them. Refuse commits until restore."""
    hook = _hook(repo)
    hook.parent.mkdir(parents=True, exist_ok=True)
    if hook.exists():
        hook.replace(_hook(repo, SAVED_HOOK))
    hook.write_text(f"#!/bin/sh\n{MARK}\necho 'refused: {' '.join(paths)} are hidden from git for a device call, so "
                    "this commit would delete them. Run `python scripts/device_tree.py restore` first.' >&2\nexit 1\n")
    hook.chmod(0o755)


def _unguard_commits(repo: Path) -> None:
    hook, saved = _hook(repo), _hook(repo, SAVED_HOOK)
    if hook.is_file() and MARK in hook.read_text():
        hook.unlink()
    if saved.exists():
        saved.replace(hook)


def _files(path: Path) -> list[Path]:
    if path.is_symlink() or path.is_file():
        return [path]  # a link travels as a link
    return [p for p in path.rglob("*") if p.is_symlink() or p.is_file()]


def size(repo: Path, carry: list[str] = ()) -> int:
    """Bytes that would travel: tracked + untracked-not-ignored files, the checkout's shared/, and `carry`."""
    names = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files = {repo / n for n in names if n}
    shared = [repo / "shared"] if (repo / "shared").is_dir() else []
    for extra in [repo / c for c in carry] + shared:
        if not (extra.exists() or extra.is_symlink()):
            raise SystemExit(f"{extra} does not exist; carry only paths that exist in the checkout")
        files.update(_files(extra))
    # a tracked file deleted here does not travel
    return sum(p.lstat().st_size for p in files if (p.is_file() or p.is_symlink()))


def hidden(repo: Path) -> list[str]:
    exclude = _exclude_file(repo)
    text = exclude.read_text() if exclude.is_file() else ""
    if MARK not in text:
        return []
    block = text.split(MARK)[1]
    return [line.strip("/") for line in block.splitlines() if line.strip()]


def hide(repo: Path, paths: tuple[str, ...] | list[str] = HIDDEN) -> None:
    if hidden(repo):
        raise SystemExit(f"already hidden: {hidden(repo)}; run `python scripts/device_tree.py restore` first")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=repo).returncode:
        raise SystemExit("the git index has staged changes; commit or unstage them first, so `restore` can "
                         "put the index back exactly")
    for p in paths:
        if not _git(repo, "ls-files", "--", p).strip():
            raise SystemExit(f"{p} is not tracked, so there is nothing to hide")
    exclude = _exclude_file(repo)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    before = exclude.read_text() if exclude.is_file() else ""
    block = "".join(f"/{p}/\n" for p in paths)
    exclude.write_text(before + ("" if before.endswith("\n") or not before else "\n") + f"{MARK}\n{block}{MARK}\n")
    _git(repo, "rm", "-r", "-q", "--cached", "--", *paths)
    _guard_commits(repo, paths)


def restore(repo: Path) -> list[str]:
    paths = hidden(repo)
    if not paths:
        return []
    _git(repo, "reset", "-q", "--", *paths)  # the index entries come back from HEAD
    _unguard_commits(repo)
    exclude = _exclude_file(repo)
    head, _, rest = exclude.read_text().partition(MARK)
    exclude.write_text(head + rest.partition(MARK)[2].lstrip("\n"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=Path(__file__).resolve().parents[1], type=Path)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("size", help="MiB a device call would send").add_argument("--carry", nargs="*", default=[])
    sub.add_parser("hide", help="leave paths behind").add_argument("paths", nargs="*", default=list(HIDDEN))
    sub.add_parser("restore", help="undo `hide`")
    args = parser.parse_args()
    repo = args.repo
    if args.cmd == "size":
        total = size(repo, args.carry)
        verdict = "fits" if total <= LIMIT else "too large: `hide` more, or carry less"
        print(f"{total / 2**20:.1f} MiB would travel (limit {LIMIT / 2**20:.0f} MiB): {verdict}")
        sys.exit(0 if total <= LIMIT else 1)
    if args.cmd == "hide":
        hide(repo, args.paths)
        print(f"hidden from device calls: {args.paths} (still on disk). Commits are refused until "
              "`python scripts/device_tree.py restore`.")
    else:
        paths = restore(repo)
        print(f"restored: {paths}" if paths else "nothing was hidden")


if __name__ == "__main__":
    main()
