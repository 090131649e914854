"""crashcart.linux.fd on real descriptors: what is closed, when, and what take() hands on."""

from __future__ import annotations

import os

import pytest

from crashcart.linux.fd import Fd, close_all, close_quietly, closing


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_closing_closes_on_the_error_path() -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(RuntimeError), closing(r) as fd:
        assert fd == r
        raise RuntimeError("step failed")
    assert not _is_open(r)


def test_fd_closes_what_was_not_taken_and_close_is_idempotent() -> None:
    r, w = os.pipe()
    with Fd(r) as owned:
        assert owned.fd == r
    assert not _is_open(r)
    owned.close()  # a second close is no error (and closes nothing that reused the number)
    with pytest.raises(ValueError):
        _ = owned.fd
    with Fd(w) as kept:
        taken = kept.take()
    assert taken == w and _is_open(w)  # the consumer owns it now
    os.close(w)


def test_close_all_skips_unset_slots_and_close_quietly_ignores_gone_fds() -> None:
    r, w = os.pipe()
    close_all((r, -1, w))
    assert not _is_open(r) and not _is_open(w)
    close_quietly((r, w, -1))  # already closed: EBADF is swallowed on a process's way out
    with pytest.raises(OSError):
        close_all((r,))
