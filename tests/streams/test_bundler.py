import orjson

from streams.replay import TickBundler

S = 1_000_000_000


def test_bundles_keep_each_symbols_order_and_close_after_their_window():
    bundler = TickBundler(window_ns=2 * S)
    out = []
    for ts, sym in [(0, "A"), (1, "B"), (1, "A"), (2, "A"), (3, "B"), (5, "A")]:
        out += bundler.due(ts * S)
        bundler.add({"symbol": sym, "ts_ns": ts * S, "price": 1.0, "size": 1.0, "bid_px": None})
    out += bundler.due(None)
    got = [(key.decode(), [t["ts_ns"] // S for t in orjson.loads(v)["ticks"]]) for key, v in out]
    assert got == [("A", [0, 1]), ("B", [1]), ("A", [2]), ("B", [3]), ("A", [5])]
    assert all("symbol" not in t and "bid_px" not in t for _, v in out for t in orjson.loads(v)["ticks"])
