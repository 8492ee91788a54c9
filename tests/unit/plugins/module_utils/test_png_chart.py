"""The PNG line-chart renderer, read back pixel by pixel with an independent decoder (tests/unit/png_decode.py)."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from png_decode import chunks, decode

from ansible_collections.inferops.vllm.plugins.module_utils import _png_chart

T0 = 1700000000.0
STEP = 30.0
RED = _png_chart.PALETTE[1]
BLUE = _png_chart.PALETTE[0]


def line(values, start=T0):
    return [(start + i * STEP, v) for i, v in enumerate(values)]


def draw(series, start=T0, end=T0 + 3600, **kwargs):
    return decode(_png_chart.render("title", series, start, end, **kwargs)), _png_chart.layout(series)


def column(image, x, colour, top, bottom):
    return [y for y in range(top, bottom + 1) if image.pixel(x, y) == colour]


def x_of(t, box, start=T0, end=T0 + 3600):
    left, right = box[0], box[1]
    return left + int(round((t - start) / (end - start) * (right - left)))


def test_structure_is_a_valid_rgb_png():
    data = _png_chart.render("t", [("a", line([1, 2, 3]))], T0, T0 + 3600)
    kinds = [kind for kind, _body in chunks(data)]
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    image = decode(data)
    assert (image.width, image.height) == (_png_chart.WIDTH, _png_chart.HEIGHT)


def test_a_rising_line_goes_from_the_bottom_left_to_the_top_right():
    values = list(range(121))
    image, box = draw([("a", line(values))])
    left, right, top, bottom = box
    assert column(image, left, BLUE, top, bottom) == [bottom]
    assert column(image, right, BLUE, top, bottom) == [top]
    # Every column between has the line, once the data covers it: no hole in continuous data.
    for x in range(left, right + 1):
        assert column(image, x, BLUE, top, bottom), "no line pixel in column %d" % x


def test_missing_data_is_a_gap_and_the_background_stays():
    values = [float(i % 10) for i in range(121)]
    points = [p for i, p in enumerate(line(values)) if not 40 <= i <= 80]
    image, box = draw([("a", points)], max_gap=2.5 * STEP)
    left, right, top, bottom = box
    hole_from, hole_to = x_of(T0 + 41 * STEP, box), x_of(T0 + 79 * STEP, box)
    for x in range(hole_from, hole_to + 1):
        assert not column(image, x, BLUE, top, bottom), "a line where no data is, in column %d" % x
        # Inside the plot, away from the grid lines, the pixels are the background.
        assert image.pixel(x, top + 5) == _png_chart.BACKGROUND
    assert column(image, x_of(T0 + 20 * STEP, box), BLUE, top, bottom)
    assert column(image, x_of(T0 + 100 * STEP, box), BLUE, top, bottom)


def test_nan_and_infinities_are_skipped_and_break_the_line():
    values = [1.0, 2.0, float("nan"), float("inf"), float("-inf"), 3.0, 4.0]
    image, box = draw([("a", line(values))], end=T0 + 6 * STEP)
    left, right, top, bottom = box
    assert column(image, left, BLUE, top, bottom) == [bottom]  # 1.0, the minimum: the infinities are not the range
    assert column(image, right, BLUE, top, bottom) == [top]    # 4.0, the maximum
    # Between 2.0 (t1) and 3.0 (t5) nothing is drawn: the bad points break the line.
    for x in range(x_of(T0 + 1 * STEP, box, end=T0 + 6 * STEP) + 2, x_of(T0 + 5 * STEP, box, end=T0 + 6 * STEP) - 1):
        assert not column(image, x, BLUE, top, bottom), x


def test_two_series_are_drawn_in_distinct_colours():
    image, box = draw([("up", line([0.0, 10.0])), ("down", line([10.0, 0.0]))], end=T0 + STEP)
    left, right, top, bottom = box
    assert column(image, left, BLUE, top, bottom) == [bottom]
    assert column(image, left, RED, top, bottom) == [top]
    assert BLUE != RED


def test_an_empty_chart_says_so_and_draws_no_line():
    for series in ([], [("a", [])], [("a", line([float("nan"), float("inf")]))]):
        image, box = draw(series)
        left, right, top, bottom = box
        colours = {image.pixel(x, y) for x in range(left, right + 1) for y in range(top, bottom + 1)}
        assert not colours & set(_png_chart.PALETTE), series
        assert _png_chart.TEXT in colours  # the "no data" message


def test_a_constant_series_is_a_flat_line_inside_the_plot():
    image, box = draw([("a", line([5.0] * 121))])
    left, right, top, bottom = box
    rows = {y for x in range(left, right + 1) for y in column(image, x, BLUE, top, bottom)}
    assert len(rows) == 1
    assert top < rows.pop() < bottom


def test_a_lone_point_is_drawn_as_a_dot():
    image, box = draw([("a", [(T0 + 1800, 1.0)])])
    left, right, top, bottom = box
    x = x_of(T0 + 1800, box)
    assert column(image, x, BLUE, top, bottom)


@pytest.mark.parametrize("low, high", [(-1.7e308, 1.7e308), (5e-324, 5e-324), (0.0, 1e-320), (-1e308, -1e308)])
def test_extreme_values_stay_in_the_plot(low, high):
    image, box = draw([("a", line([low, high]))], end=T0 + STEP)
    left, right, top, bottom = box
    assert column(image, left, BLUE, top, bottom) and column(image, right, BLUE, top, bottom)


def test_hostile_titles_and_labels_are_drawn_as_question_marks():
    title = "../../etc/passwd\n\x1b[31m\u202e\u00df"
    data = _png_chart.render(title, [("line\nbreak", line([1, 2]))], T0, T0 + 60)
    decode(data)
    assert _png_chart._fit(title, 80) == "../../etc/passwd??[31m??"


def test_value_labels():
    assert _png_chart.format_value(0) == "0"
    assert _png_chart.format_value(0.95) == "0.95"
    assert len(_png_chart.format_value(-1.7e308)) <= 9
    assert _png_chart.format_time(float("inf")) == "?"


FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0])
TIMES = st.floats(min_value=T0 - 7200, max_value=T0 + 7200) | st.floats(allow_nan=True, allow_infinity=True)
SERIES = st.lists(st.tuples(st.text(max_size=40), st.lists(st.tuples(TIMES, FLOATS), max_size=60)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(title=st.text(max_size=200), series=SERIES, start=TIMES, span=st.floats(min_value=-10, max_value=1e6),
       zero=st.booleans())
def test_any_input_gives_a_valid_png_with_lines_only_in_the_plot_or_legend(title, series, start, span, zero):
    end = start + span if math.isfinite(start) else start
    data = _png_chart.render(title, series, start, end, include_zero=zero)
    image = decode(data)
    assert (image.width, image.height) == (_png_chart.WIDTH, _png_chart.HEIGHT)
    left, right, top, bottom = _png_chart.layout(series)
    palette = set(_png_chart.PALETTE)
    for y in range(image.height):
        for x, colour in enumerate(image.row_pixels(y)):  # image.pixel(x, y), a row at a time
            if colour in palette and y < bottom + 24:
                assert left <= x <= right + 1 and top - 1 <= y <= bottom, (x, y)
