"""User text (file names, class names, column names) is shown as text, never as markdown: a
class named like an image loads nothing, a file named like a link links nowhere."""

from __future__ import annotations

import pytest
from test_app import button, run_until  # tests/ is on the path under pytest's default import mode

IMAGE = "![x](https://host/pixel)"
LINK_FILE = "[open me](https://host/x).csv"


def _csv(label_name: str) -> bytes:
    rows = [f"{i % 7},{(i * 3) % 5},{label_name if i % 2 else 'plain'}" for i in range(40)]
    return ("a,b,label\n" + "\n".join(rows) + "\n").encode()


@pytest.fixture()
def shown_as_text(render_markdown):
    def check(elements, text: str) -> bool:
        """Some element shows ``text`` literally, and none renders a link, image or HTML."""
        results = [render_markdown(element.value) for element in elements]
        assert all(not kinds for _, kinds in results), [kinds for _, kinds in results]
        return any(text in seen for seen, _ in results)

    return check


def test_a_file_named_like_a_link_and_a_column_named_like_an_image_are_text(tmp_path, open_app, shown_as_text):
    app = open_app(tmp_path, timeout=120)
    app.run()
    app.radio(key="data_source").set_value("Upload").run()
    app.file_uploader(key="data_file").set_value((LINK_FILE, _csv("b"), "text/csv")).run()
    assert not app.exception and not app.error
    assert shown_as_text(app.caption, LINK_FILE)
    bad_column = f"{IMAGE},label\n1,0\nabc,1\n".encode()
    app.file_uploader(key="data_file").set_value(("bad.csv", bad_column, "text/csv")).run()
    assert shown_as_text(app.error, f"column '{IMAGE}' is not numeric")


def test_a_class_named_like_an_image_is_text_on_the_noisy_labels_page(tmp_path, open_app, shown_as_text):
    app = open_app(tmp_path)
    app.run()
    app.radio(key="data_source").set_value("Upload").run()
    app.file_uploader(key="data_file").set_value(("tiny.csv", _csv(IMAGE), "text/csv")).run()
    assert not app.exception and not app.error
    app.switch_page("pages/4_Noisy_labels.py").run()
    button(app, "Flag training points").click().run()
    run_until(app, lambda a: any(b.label == "Keep" for b in a.button))
    given = [m for m in app.markdown if m.value.startswith("Given label:")]
    assert given and shown_as_text(given, IMAGE)
