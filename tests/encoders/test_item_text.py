"""Item text (TMF §3.2): template segments over catalog columns, NaN skipped, missing columns named."""

import numpy as np
import pandas as pd
import pytest

from llmrec.encoders.item_text import ItemTextTemplate, render_item_texts


def _catalog():
    return pd.DataFrame({
        "item_id": ["a", "b", "c"],
        "title": ["Trail Runner", "City Bag", None],
        "brand": ["Acme", np.nan, None],
        "category": [["shoes", "running"], "bags", np.nan],
        "text": ["Light and fast.", "", float("nan")],
    })


def test_segments_are_joined_and_missing_values_skip_their_segment():
    template = ItemTextTemplate(("{title}", "Brand: {brand}", "Categories: {category}", "{text}"), ". ")
    texts = render_item_texts(_catalog(), template)
    assert texts[0] == "Trail Runner. Brand: Acme. Categories: shoes, running. Light and fast."
    assert texts[1] == "City Bag. Categories: bags"  # NaN brand and empty text left out, no "nan"
    assert texts[2] is None  # nothing at all: no text for this item


def test_a_segment_with_one_present_column_keeps_it():
    template = ItemTextTemplate(("{title} by {brand}",))
    texts = render_item_texts(_catalog(), template)
    assert texts[:2] == ["Trail Runner by Acme", "City Bag by"]


def test_missing_column_is_named_with_the_available_ones():
    template = ItemTextTemplate(("{title}", "{description}"))
    with pytest.raises(ValueError) as err:
        render_item_texts(_catalog(), template)
    message = str(err.value)
    assert "['description']" in message and "'brand'" in message


@pytest.mark.parametrize("segment", ["{0}", "{title.upper}", "{title[0]}", "{title"])
def test_malformed_segments_are_rejected(segment):
    with pytest.raises(ValueError, match="segment"):
        ItemTextTemplate((segment,))


def test_columns_are_listed_in_order_of_use():
    template = ItemTextTemplate(("{title} ({brand})", "{brand}: {text}"))
    assert template.columns == ["title", "brand", "text"]
