"""fenlei's benchmark harness (``make bench`` / ``python -m bench``); never part of the tests."""
