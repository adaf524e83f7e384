"""The history book: workflows followed across reloads, and what it writes to its store,
including a reload that removes a workflow while a flush is writing."""

from __future__ import annotations

import threading

from exporter.config import build_config
from exporter.tracking.book import HistoryBook
from exporter.tracking.persistence import Change, Loaded
from tests.support.exporters import API_KEY
from tests.support.polling import wait_for


class BlockingStore:
    """A persistent store whose first delete waits until the test lets it go on."""

    persistent = True

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.deleting = threading.Event()
        self.go_on = threading.Event()
        self._first = True

    def load(self) -> Loaded:
        return {}

    def save(self, changes: list[Change]) -> None:
        pass

    def delete_workflows(self, workflow_ids: list[str]) -> None:
        ids = list(workflow_ids)  # what this write deletes, as a real store reads them
        if self._first:
            self._first = False
            self.deleting.set()
            assert self.go_on.wait(10)
        self.deleted.extend(ids)

    def close(self) -> None:
        pass


def config(*workflow_ids: str):
    return build_config(
        {"workflows": [{"id": w} for w in workflow_ids]}, env={"COPYAI_API_KEY": API_KEY}
    )


def test_a_workflow_removed_while_a_flush_writes_is_deleted_by_the_next():
    store = BlockingStore()
    book = HistoryBook(store, lambda: 1_000.0)
    book.configure(config("WCFG-a", "WCFG-b", "WCFG-c"))
    book.configure(config("WCFG-b", "WCFG-c"))  # WCFG-a goes: deleted at the next flush
    flushing = threading.Thread(target=book.flush)
    flushing.start()
    wait_for(store.deleting.is_set)
    book.configure(config("WCFG-c"))  # WCFG-b goes while WCFG-a is being deleted
    store.go_on.set()
    flushing.join(10)
    book.flush()
    assert store.deleted == ["WCFG-a", "WCFG-b"]
    book.flush()
    assert store.deleted == ["WCFG-a", "WCFG-b"]  # and each only once
