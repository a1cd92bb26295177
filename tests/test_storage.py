"""Where `write_atomic` puts what it writes (new folders made, symbolic links kept, pipes written through), and the
up-front check of the same place."""

from __future__ import annotations

import os
import re
import threading

import pytest

from clipzs.errors import ClipzsError
from clipzs.storage import check_output_file, write_atomic


def test_missing_folders_are_made(tmp_path):
    write_atomic(tmp_path / "a" / "b" / "r.json", b"new")
    assert (tmp_path / "a" / "b" / "r.json").read_bytes() == b"new"


def test_a_symbolic_link_keeps_pointing_at_its_target_which_is_replaced(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "r.json").write_bytes(b"old")
    (tmp_path / "link.json").symlink_to("keep/r.json")
    write_atomic(tmp_path / "link.json", b"new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "keep" / "r.json").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "keep")) == ["r.json"]  # no temporary file left behind


def test_a_named_pipe_is_written_through_not_replaced(tmp_path):
    pipe = tmp_path / "out.json"
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()  # opening a pipe's write end waits for its reader, and the reader for the writer: no race
    write_atomic(pipe, b"through the pipe")
    reader.join()
    assert got == [b"through the pipe"] and pipe.is_fifo()


def test_the_up_front_check_follows_a_link_to_where_the_write_goes(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (tmp_path / "link.json").symlink_to(blocker / "r.json")  # its own folder is writable; its target's is no folder
    with pytest.raises(
        ClipzsError, match=rf"^cannot write out {re.escape(str(tmp_path / 'link.json'))}: .*not a folder"
    ):
        check_output_file(tmp_path / "link.json", "out")
    os.mkfifo(tmp_path / "pipe")
    check_output_file(tmp_path / "pipe", "out")  # written through: nothing is created beside it
    assert sorted(os.listdir(tmp_path)) == ["a-file", "link.json", "pipe"]
