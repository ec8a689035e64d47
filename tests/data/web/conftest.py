"""The embedded default crawl (`dscoder.data.web.default_corpus`), written once per test session."""
import pytest

from dscoder.data.web.default_corpus import write_default_corpus


@pytest.fixture(scope="session")
def web_corpus(tmp_path_factory) -> dict:
    return write_default_corpus(tmp_path_factory.mktemp("crawl"), seed=0)


@pytest.fixture(scope="session")
def web_heldout(tmp_path_factory) -> dict:
    """A second crawl from another generator seed: pages no classifier was trained on."""
    return write_default_corpus(tmp_path_factory.mktemp("heldout"), seed=1)

