"""Trade analytics from Hyperliquid fills: closed trades and the metrics of trading-metrics.md.

One module for `runbook analyze trades` and for the daily summary.

Definitions (the issue, on top of trading-metrics.md):

* A *trade* is one closing order: the fills sharing a `(coin, oid)` of which at least one closes a
  position -- `dir` starting with `Close`, a flip (`Long > Short`, `Short > Long`), a liquidation
  (`dir` starting with `Liquidated` or a `liquidation` object on a fill that is not an `Open`), or one of
  the forced closes `Auto-Deleveraging` / `Settlement`. All fills of that order belong to the trade.
  Its PnL is sum(`closedPnl`) - sum(`fee`) of those fills. Spot `Buy`/`Sell` fills are not trades.
* `total_pnl` = sum(`closedPnl`) - sum(`fee`) over every fill of the window (so opening fees count there,
  but not in any trade); `fees` = sum(`fee`); funding (`userFunding`) is reported on its own, never mixed in.
* Win `p > 0`, loss `p < 0`, break-even `p = 0`: break-evens count in `trades` (the win-rate denominator),
  not in wins or losses, and they break both streaks.
* Equity starts at the start balance at 00:00 UTC of the first fill's day and moves by `closedPnl - fee` of
  **every** fill at its time (trading-metrics.md rule 9): a fee paid on an opening-only order is a cost the
  moment it is paid, so `equity_end - equity_start == total_pnl` always. Fills of one millisecond move it
  once. Drawdown is taken on the equity after each such move, the start included; the absolute and the %
  drawdown are each their own maximum (they may come from different troughs). The trade list (win rate,
  profit factor, streaks, best/worst) still counts closing orders only.
* Order (rule 10): fills by time, fills of one time by `tid` (fills with one first), then `oid`, then their
  position in the input; trades by their last fill in that order (close time = the last fill's time), so
  trades closed in one millisecond are ordered by the tid, else the oid, else the input position of their
  last fill. Streaks depend on it. Daily equity is the equity at the end of every UTC day from the first to the last
  fill day; daily returns `E_d / E_{d-1} - 1` start from the start balance, so N days give N returns.
  Sharpe = mean/std(ddof=1)*sqrt(365), Sortino = mean/sqrt(sum(min(r,0)^2)/N)*sqrt(365); both None with
  fewer than two returns, a zero denominator, or an equity that reached 0 (returns undefined).
* No trades: counts and streaks 0, ratios / profit factor / best / worst / averages / expectancy None,
  drawdown 0. Profit factor: +inf with wins and no losses (JSON null + `profit_factor_infinite`), None when
  gross profit and gross loss are both 0, 0 with losses and no wins.

Money is exact: the decimal strings of the API are parsed (vectorised, numpy) into integers of
10^-scale units, summed as integers and handed out as `Decimal`; only ratios are floats. Nothing in the
hot path loops over fills in Python: columns are pulled out of the dicts once, everything after that is
numpy / pandas groupby.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from itertools import repeat
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

__all__ = [
    "FillsError", "TradeMetrics", "CoinMetrics", "load_fills", "fills_frame", "closed_trades",
    "compute_metrics", "format_metrics_text", "analyze_trades_command", "REQUIRED_FIELDS", "read_fill_list",
    "equity_curve", "net_pnl",
]

DAY_MS = 86_400_000
ANNUALISATION = math.sqrt(365)
# Fields a fill must carry (every API version so far has them). Everything else is optional.
REQUIRED_FIELDS = ("coin", "oid", "time", "dir", "px", "sz", "closedPnl", "fee")
OPTIONAL_FIELDS = ("side", "startPosition", "tid", "hash", "liquidation")
# Where a response object may hold the list of fills (recorded files: {"request":..., "response": [...]};
# websocket userFills: {"channel": ..., "data": {"fills": [...]}}).
_CONTAINER_KEYS = ("fills", "response", "data", "result")
_FORCED_CLOSE_DIRS = {"auto-deleveraging", "settlement"}
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
_INT64_SAFE = 2**62  # sums of absolute values below this cannot overflow int64


class FillsError(ValueError):
    """Unusable fills input; the message is one line meant for the operator."""


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_fills(source: str | Path | IO[Any]) -> list[dict[str, Any]]:
    """Read fills from a path, `-` (stdin) or an open file: a JSON list of fills or a response object holding
    one. Validates every fill (FillsError naming the index and field) and drops duplicates (same `tid`,
    `coin` and `time`; without `tid`: same `hash`, `oid`, `time`, `px`, `sz`). Order is kept."""
    fills = _read_fill_list(source)
    frame = fills_frame(fills)
    if frame.attrs.get("duplicates_dropped"):
        keep = np.sort(frame.index.to_numpy())
        return [fills[i] for i in keep]
    return fills


def _read_fill_list(source: str | Path | IO[Any]) -> list[Any]:
    if isinstance(source, (str, Path)):
        name = "<stdin>" if str(source) == "-" else str(source)
    else:
        name = str(getattr(source, "name", "<stream>"))
    try:
        if isinstance(source, (str, Path)):
            if str(source) == "-":
                text = sys.stdin.read()
            else:
                text = Path(source).read_bytes().decode("utf-8-sig")
        else:
            text = source.read()
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FillsError(f"cannot read fills from {name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FillsError(f"cannot read fills from {name}: {exc.strerror or exc}") from None
    if not text.strip():
        raise FillsError(f"no fills in {name}: the input is empty (expected a JSON list of fills)")
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise FillsError(f"invalid JSON in {name}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise FillsError(f"invalid JSON in {name}: nested too deeply") from None
    return _find_fill_list(data, name)


def read_fill_list(source: str | Path | IO[Any]) -> list[Any]:
    """The list of fills in a file (`-`: stdin) or an open stream, as parsed: fills_frame validates it.

    Like load_fills without the validation pass, for callers that build the frame right after."""
    return _read_fill_list(source)


def _find_fill_list(data: Any, name: str, depth: int = 0) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and depth < 3:
        for key in _CONTAINER_KEYS:
            if key in data and isinstance(data[key], (list, dict)):
                try:
                    return _find_fill_list(data[key], name, depth + 1)
                except FillsError:
                    continue
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:8]) or "none"
        raise FillsError(f"no list of fills in {name}: expected a JSON list, or an object holding one under "
                         f"'fills' or 'response'; got an object with keys {keys}")
    raise FillsError(f"no list of fills in {name}: expected a JSON list of fills, got {_json_type(data)}")


def _show(value: Any) -> str:
    """A value as it looked in the JSON (one line, bounded)."""
    text = str(value) if isinstance(value, Decimal) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------------------
# Exact money: decimal strings -> integers of 10^-scale units, vectorised


class _Money:
    """A column of decimal amounts, parsed without floats. `decimals` is the largest number of fraction
    digits; `units(scale)` gives int64 (or Python-int object) values of 10^-scale."""

    def __init__(self, values: Sequence[Any], field_name: str, labels: np.ndarray) -> None:
        n = len(values)
        self.n = n
        self.slow: dict[int, Decimal] = {}
        self.valid = np.zeros(n, dtype=bool)
        arr = None
        if n:
            try:
                arr = np.array(values, dtype="S")
            except (UnicodeEncodeError, ValueError, TypeError):
                arr = None
            if arr is not None and arr.ndim != 1:  # lists of equal length became a 2-D array
                arr = None
        decimals = 0
        if arr is not None and n:
            width = arr.itemsize
            codes = arr.view(np.uint8).reshape(n, width)
            is_digit = (codes >= 48) & (codes <= 57)
            is_dot = codes == 46
            is_nul = codes == 0
            first = codes[:, 0]
            has_sign = (first == 45) | (first == 43)
            allowed = is_digit | is_dot | is_nul
            allowed[:, 0] |= has_sign
            length = (~is_nul).sum(axis=1)
            first_nul = np.where(is_nul.any(axis=1), is_nul.argmax(axis=1), width)
            n_dots = is_dot.sum(axis=1)
            # bools, None, dicts become b'True', b'None', b"{...}" and fail here
            valid = allowed.all(axis=1) & (first_nul == length) & (n_dots <= 1) & (is_digit.sum(axis=1) >= 1)
            dotpos = np.where(n_dots == 1, is_dot.argmax(axis=1), length)
            frac_len = np.where(n_dots == 1, length - dotpos - 1, 0)
            self.valid = valid
            self._codes, self._is_digit, self._dotpos = codes, is_digit, dotpos
            self._neg = first == 45
            self._int_len = dotpos - has_sign.astype(np.int64)
            if valid.any():
                decimals = int(frac_len[valid].max())
        for row in np.flatnonzero(~self.valid):
            self.slow[int(row)] = _to_decimal(values[row], field_name, int(labels[row]))
        for value in self.slow.values():
            decimals = max(decimals, -int(value.as_tuple().exponent))
        self.decimals = decimals

    def units(self, scale: int) -> np.ndarray:
        n = self.n
        out = np.zeros(n, dtype=np.int64)
        extra: dict[int, int] = {}
        if n and self.valid.any():
            fast = self.valid & (self._int_len + scale <= 18)
            codes, dotpos = self._codes, self._dotpos
            for j in range(codes.shape[1]):
                mask = self._is_digit[:, j] & fast
                if not mask.any():
                    continue
                exponent = np.where(j < dotpos, scale + dotpos - j - 1, scale + dotpos - j)
                digit = codes[:, j].astype(np.int64) - 48
                out += np.where(mask, digit * _POW10[np.clip(exponent, 0, 18)], 0)
            out = np.where(self._neg, -out, out)
            for row in np.flatnonzero(self.valid & ~fast):  # more than 18 digits: exact, slowly
                text = bytes(codes[row]).rstrip(b"\0").decode()
                extra[int(row)] = int(Decimal(text).scaleb(scale))
        for row, value in self.slow.items():
            extra[row] = int(value.scaleb(scale))
        if not extra:
            return out
        if all(-(2**63) < v < 2**63 for v in extra.values()):
            for row, value in extra.items():
                out[row] = value
            return out
        obj = out.astype(object)
        for row, value in extra.items():
            obj[row] = value
        return obj


def _to_decimal(value: Any, field_name: str, label: int | None) -> Decimal:
    where = f"fill at index {label}: " if label is not None else ""
    result: Decimal | None = None
    if isinstance(value, bool) or value is None:
        result = None
    elif isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            result = None
    if result is None or not result.is_finite():
        raise FillsError(f"{where}field {field_name!r} is not a decimal number: {_show(value)}")
    return result


def _decimals_of(value: Decimal) -> int:
    return max(0, -int(value.as_tuple().exponent))


def _rescale(units: np.ndarray, factor_exp: int) -> np.ndarray:
    if factor_exp == 0:
        return units
    factor = 10**factor_exp
    if units.dtype != object and (len(units) == 0 or int(np.abs(units).max()) * factor < _INT64_SAFE):
        return units * np.int64(factor)
    return units.astype(object) * factor


def _safe(*columns: np.ndarray) -> bool:
    """True when int64 sums over these columns cannot overflow."""
    total = 0.0
    for col in columns:
        if col.dtype == object:
            return False
        total += float(np.abs(col.astype(np.float64)).sum())
    return total < _INT64_SAFE


def _dec(units: Any, scale: int) -> Decimal:
    return Decimal(int(units)).scaleb(-scale)


# ----------------------------------------------------------------------------------------------------------
# Frames


def fills_frame(fills: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Validated, typed, de-duplicated fills, sorted by time; index = position in the input list.

    Columns: coin, oid, time (ms), px, sz, side, dir, start_position (NaN when absent), tid, hash,
    closed_pnl_u / fee_u (exact integers of 10^-money_scale USDC), closed_pnl / fee (floats, for display),
    is_closing, is_flip, is_liquidation, closes ("long"/"short" for closing fills), position_opened_at (ms,
    NaN when the opening is outside the data). attrs: money_scale, duplicates_dropped, input_fills.
    """
    if isinstance(fills, pd.DataFrame):
        if "closed_pnl_u" in fills.columns and "money_scale" in fills.attrs:
            return fills
        raise FillsError("fills_frame takes a list of fill objects (or a frame made by fills_frame)")
    fills = fills if isinstance(fills, list) else list(fills)
    n = len(fills)
    labels = np.arange(n)
    try:  # the one pass over the dicts: one C-level map per field
        cols = {key: list(map(dict.get, fills, repeat(key, n))) for key in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    except TypeError:
        bad = next(i for i, f in enumerate(fills) if not isinstance(f, dict))
        raise FillsError(f"fill at index {bad} is {_json_type(fills[bad])}, not an object") from None

    made: dict[str, pd.Series] = {}

    def series(key: str) -> pd.Series:
        if key not in made:
            made[key] = pd.Series(cols[key], dtype=object)
        return made[key]

    missing = np.vstack([series(key).isna().to_numpy() for key in REQUIRED_FIELDS]) if n else np.zeros((0, 0))
    if missing.any():
        i = int(missing.any(axis=0).argmax())
        absent = [k for k in REQUIRED_FIELDS if k not in fills[i]]
        null = [k for k in REQUIRED_FIELDS if k in fills[i] and missing[REQUIRED_FIELDS.index(k), i]]
        parts = []
        if absent:
            parts.append(f"missing required field{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))}")
        if null:
            parts.append(f"null/NaN in required field{'s' if len(null) > 1 else ''} {', '.join(map(repr, null))}")
        raise FillsError(f"fill at index {i}: {'; '.join(parts)}")

    coin = _text_column(series("coin"), "coin")
    dir_ = _text_column(series("dir"), "dir")
    side_raw = series("side")
    oid = _int_column(series("oid"), "oid")
    time = _int_column(series("time"), "time")
    px = _float_column(series("px"), "px")
    sz = _float_column(series("sz"), "sz")
    start_position = pd.to_numeric(series("startPosition"), errors="coerce").to_numpy(dtype=np.float64)

    pnl_col = _Money(cols["closedPnl"], "closedPnl", labels)
    fee_col = _Money(cols["fee"], "fee", labels)
    scale = max(pnl_col.decimals, fee_col.decimals)
    closed_u = pnl_col.units(scale)
    fee_u = fee_col.units(scale)
    if not _safe(closed_u, fee_u):
        closed_u, fee_u = closed_u.astype(object), fee_u.astype(object)

    # dir is display text; classify its few distinct values once, then broadcast by code
    dir_codes, dir_values = pd.factorize(dir_)
    kinds = [_classify_dir(str(d)) for d in dir_values]
    dir_closing, dir_open, dir_flip, dir_liq = (
        np.array([k[i] for k in kinds], dtype=bool)[dir_codes] if n else np.zeros(0, dtype=bool) for i in range(4)
    )
    dir_closes = np.array([k[4] for k in kinds] + [None], dtype=object)[dir_codes] if n else np.zeros(0, object)
    liq_field = series("liquidation").notna().to_numpy()
    is_closing = dir_closing | (liq_field & ~dir_open)
    is_liquidation = (dir_liq | liq_field) & is_closing
    side = side_raw.where(side_raw.isin(["A", "B"]), None)
    from_side = np.where(side.to_numpy() == "A", "long", np.where(side.to_numpy() == "B", "short", None))
    closes = np.where(is_closing, np.where(pd.isna(dir_closes), from_side, dir_closes), None)

    frame = pd.DataFrame(
        {
            "coin": coin, "oid": oid, "time": time, "px": px, "sz": sz, "side": side.to_numpy(dtype=object),
            "dir": dir_.to_numpy(dtype=object), "start_position": start_position,
            "tid": series("tid").to_numpy(), "hash": series("hash").to_numpy(),
            "closed_pnl_u": closed_u, "fee_u": fee_u,
            "is_closing": is_closing, "is_flip": dir_flip, "is_liquidation": is_liquidation, "closes": closes,
        },
        index=pd.RangeIndex(n),
    )

    # duplicates: same tid (unique per coin and time, API docs) or, without tid, same hash/oid/time/px/sz
    dup = np.zeros(n, dtype=bool)
    has_tid = frame["tid"].notna().to_numpy()
    if has_tid.any():
        dup[has_tid] = frame.loc[has_tid, ["tid", "coin", "time"]].duplicated().to_numpy()
    if (~has_tid).any():
        raw = pd.DataFrame({"hash": frame["hash"], "oid": frame["oid"], "time": frame["time"],
                            "px": series("px").astype(str), "sz": series("sz").astype(str)})
        dup[~has_tid] = raw.loc[~has_tid].duplicated().to_numpy()
    if dup.any():
        frame = frame.loc[~dup]

    frame = frame.iloc[_tie_order(frame)]
    frame["closed_pnl"] = _units_to_float(frame["closed_pnl_u"].to_numpy(), scale)
    frame["fee"] = _units_to_float(frame["fee_u"].to_numpy(), scale)
    frame["position_opened_at"] = _position_opened_at(frame)
    frame.attrs.update(money_scale=scale, duplicates_dropped=int(dup.sum()), input_fills=n)
    return frame


def _tie_order(frame: pd.DataFrame) -> np.ndarray:
    """Positions that sort the fills by time, and fills of one time by `tid` (fills with one first), then
    `oid`, then their position in the input (trading-metrics.md rule 10: streaks depend on it)."""
    tid = pd.to_numeric(frame["tid"], errors="coerce").to_numpy(dtype=np.float64)
    no_tid = np.isnan(tid)
    return np.lexsort((frame.index.to_numpy(), frame["oid"].to_numpy(), np.where(no_tid, 0.0, tid), no_tid,
                       frame["time"].to_numpy()))


def _classify_dir(d: str) -> tuple[bool, bool, bool, bool, str | None]:
    """(closing, opening, flip, liquidation, side of the position it closes) for one `dir` value."""
    low = d.strip().lower()
    flip = ">" in low
    liq = low.startswith("liquidat")
    closing = low.startswith("close") or flip or liq or low in _FORCED_CLOSE_DIRS
    opening = low.startswith("open")
    closes = None
    if flip:
        before = low.split(">", 1)[0]
        closes = "long" if "long" in before else "short" if "short" in before else None
    elif closing:
        closes = "long" if "long" in low else "short" if "short" in low else None
    return closing, opening, flip, liq, closes


def _text_column(s: pd.Series, key: str) -> pd.Series:
    if pd.api.types.infer_dtype(s, skipna=False) not in ("string", "empty"):
        i = next(i for i, v in enumerate(s) if not isinstance(v, str))
        raise FillsError(f"fill at index {i}: field {key!r} must be a string, got {_json_type(s.iloc[i])}")
    return s


def _numbers(s: pd.Series, key: str) -> pd.Series:
    """Numeric values of a column; FillsError naming the first fill whose value is not a number."""
    kind = pd.api.types.infer_dtype(s, skipna=False)
    values = pd.to_numeric(s, errors="coerce")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=np.float64))
    if kind not in ("integer", "floating", "decimal", "string", "empty"):  # bools hide as 0/1
        bad |= s.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool)
    if bad.any():
        i = int(bad.argmax())
        raise FillsError(f"fill at index {i}: field {key!r} is not a number: {_show(s.iloc[i])}")
    return values


def _int_column(s: pd.Series, key: str) -> np.ndarray:
    values = _numbers(s, key)
    if values.dtype.kind in "iu":
        return values.to_numpy(dtype=np.int64)
    floats = values.to_numpy(dtype=np.float64)
    bad = floats != np.floor(floats)
    if bad.any():
        i = int(bad.argmax())
        raise FillsError(f"fill at index {i}: field {key!r} must be an integer, got {_show(s.iloc[i])}")
    return floats.astype(np.int64)


def _float_column(s: pd.Series, key: str) -> np.ndarray:
    return _numbers(s, key).to_numpy(dtype=np.float64)


def _units_to_float(units: np.ndarray, scale: int) -> np.ndarray:
    if units.dtype == object:
        return np.array([float(_dec(u, scale)) for u in units], dtype=np.float64)
    return units.astype(np.float64) / 10.0**scale


def _position_opened_at(frame: pd.DataFrame) -> np.ndarray:
    """For each fill, when the position it acts on was opened (ms): the last fill of that coin before it that
    started from flat (startPosition 0) or flipped. NaN when that is outside the data or unknowable (a fill
    without startPosition in between)."""
    if frame.empty:
        return np.zeros(0, dtype=np.float64)
    start = frame["start_position"].to_numpy()
    opens = ((start == 0) & ~frame["is_closing"].to_numpy()) | frame["is_flip"].to_numpy()
    marker = np.where(opens, frame["time"].to_numpy().astype(np.float64), np.nan)
    marker = np.where(np.isnan(start) & ~opens, -1.0, marker)  # unknown from here on
    grouped = pd.Series(marker, index=frame.index).groupby(frame["coin"].to_numpy(), sort=False)
    before = grouped.shift(1)
    opened = before.groupby(frame["coin"].to_numpy(), sort=False).ffill().to_numpy()
    return np.where(opened < 0, np.nan, opened)


def closed_trades(frame: pd.DataFrame | Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per closing order, in close order (close time = its last fill).

    Columns: coin, oid, dir (of its last fill), position ("long"/"short" closed), side, fills, size,
    avg_exit_px, open_time (ms, when the position was opened, NaN if unknown), first_time, close_time (ms),
    closed_at (UTC datetime), holding_seconds, closed_pnl, fees, pnl (floats), pnl_u / closed_pnl_u / fee_u
    (exact integers of 10^-money_scale), is_liquidation. attrs: money_scale.
    """
    frame = fills_frame(frame)
    scale = frame.attrs["money_scale"]
    keys = ["coin", "oid"]
    member = frame.groupby(keys, sort=False)["is_closing"].transform("any").to_numpy(dtype=bool)
    fills = frame.loc[member]
    if fills.empty:
        columns = ["coin", "oid", "dir", "position", "side", "fills", "size", "avg_exit_px", "open_time",
                   "first_time", "close_time", "closed_at", "holding_seconds", "closed_pnl", "fees", "pnl",
                   "pnl_u", "closed_pnl_u", "fee_u", "is_liquidation"]
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        empty.attrs["money_scale"] = scale
        return empty
    # rank: the position of each fill in time-and-tie order (fills_frame); a trade sorts by its last fill's
    fills = fills.assign(notional=fills["px"] * fills["sz"], rank=np.arange(len(fills)))
    grouped = fills.groupby(keys, sort=False)
    trades = grouped.agg(
        dir=("dir", "last"), position=("closes", "first"), side=("side", "first"), fills=("time", "size"),
        size=("sz", "sum"), notional=("notional", "sum"),
        first_time=("time", "min"), close_time=("time", "max"), closed_pnl_u=("closed_pnl_u", "sum"),
        fee_u=("fee_u", "sum"), is_liquidation=("is_liquidation", "any"), rank=("rank", "max"),
    ).reset_index()
    first_fills = fills.drop_duplicates(keys, keep="first")  # fills are in time order
    trades["open_time"] = first_fills["position_opened_at"].to_numpy()  # groups come in first-seen order
    trades["pnl_u"] = trades["closed_pnl_u"] - trades["fee_u"]
    # close order; trades closed at one time by the tid, else oid, else input position of their last fill
    trades = trades.sort_values("rank", kind="stable").reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        trades["avg_exit_px"] = np.where(trades["size"] > 0, trades["notional"] / trades["size"], np.nan)
    trades["closed_at"] = pd.to_datetime(trades["close_time"], unit="ms", utc=True)
    trades["holding_seconds"] = (trades["close_time"] - trades["open_time"]) / 1000.0
    for name in ("closed_pnl", "pnl"):
        trades[name] = _units_to_float(trades[f"{name}_u"].to_numpy(), scale)
    trades["fees"] = _units_to_float(trades["fee_u"].to_numpy(), scale)
    trades = trades[["coin", "oid", "dir", "position", "side", "fills", "size", "avg_exit_px", "open_time",
                     "first_time", "close_time", "closed_at", "holding_seconds", "closed_pnl", "fees", "pnl",
                     "pnl_u", "closed_pnl_u", "fee_u", "is_liquidation"]]
    trades.attrs["money_scale"] = scale
    return trades


# ----------------------------------------------------------------------------------------------------------
# Metrics


@dataclass
class CoinMetrics:
    trades: int
    wins: int
    losses: int
    breakevens: int
    win_rate: float | None
    profit_factor: float | None  # math.inf when there are wins and no losses
    total_pnl: Decimal
    fees: Decimal
    funding: Decimal | None
    best_trade: Decimal | None
    worst_trade: Decimal | None
    avg_win: Decimal | None
    avg_loss: Decimal | None
    expectancy: Decimal | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "trades": self.trades, "wins": self.wins, "losses": self.losses, "breakevens": self.breakevens,
            "win_rate": self.win_rate, "profit_factor": _finite(self.profit_factor),
            "profit_factor_infinite": _is_inf(self.profit_factor), "total_pnl": _num(self.total_pnl),
            "fees": _num(self.fees), "funding": _num(self.funding), "best_trade": _num(self.best_trade),
            "worst_trade": _num(self.worst_trade), "avg_win": _num(self.avg_win),
            "avg_loss": _num(self.avg_loss), "expectancy": _num(self.expectancy),
        }


@dataclass
class TradeMetrics:
    trades: int
    wins: int
    losses: int
    breakevens: int
    win_rate: float | None
    profit_factor: float | None  # math.inf when there are wins and no losses
    total_pnl: Decimal
    fees: Decimal
    funding: Decimal | None
    best_trade: Decimal | None
    worst_trade: Decimal | None
    avg_win: Decimal | None
    avg_loss: Decimal | None  # positive
    expectancy: Decimal | None
    max_drawdown: Decimal
    max_drawdown_pct: float  # fraction of the running peak
    sharpe: float | None
    sortino: float | None
    longest_winning_streak: int
    longest_losing_streak: int
    equity_start: Decimal
    equity_end: Decimal
    daily_equity: list[tuple[date, Decimal]]
    period_start: datetime | None
    period_end: datetime | None
    by_coin: dict[str, CoinMetrics]
    fills: int = 0  # fills used (after de-duplication)
    duplicates_dropped: int = 0
    trade_pnl: Decimal = Decimal(0)  # sum of trade PnLs (total_pnl less the net of orders that close nothing)

    @property
    def profit_factor_infinite(self) -> bool:
        return _is_inf(self.profit_factor)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: money as numbers (exact decimals rendered as floats), ratios as floats, no inf/NaN
        (an infinite profit factor is null with `profit_factor_infinite: true`)."""
        return {
            "trades": self.trades, "wins": self.wins, "losses": self.losses, "breakevens": self.breakevens,
            "win_rate": self.win_rate, "profit_factor": _finite(self.profit_factor),
            "profit_factor_infinite": self.profit_factor_infinite, "total_pnl": _num(self.total_pnl),
            "fees": _num(self.fees), "funding": _num(self.funding), "best_trade": _num(self.best_trade),
            "worst_trade": _num(self.worst_trade), "avg_win": _num(self.avg_win),
            "avg_loss": _num(self.avg_loss), "expectancy": _num(self.expectancy),
            "max_drawdown": _num(self.max_drawdown), "max_drawdown_pct": self.max_drawdown_pct,
            "sharpe": self.sharpe, "sortino": self.sortino,
            "longest_winning_streak": self.longest_winning_streak,
            "longest_losing_streak": self.longest_losing_streak,
            "equity_start": _num(self.equity_start), "equity_end": _num(self.equity_end),
            "daily_equity": [{"date": d.isoformat(), "equity": _num(e)} for d, e in self.daily_equity],
            "period_start": _iso(self.period_start), "period_end": _iso(self.period_end),
            "by_coin": {coin: m.to_dict() for coin, m in self.by_coin.items()},
        }


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else float(value)


def _is_inf(value: float | None) -> bool:
    return value is not None and math.isinf(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _balance(value: Decimal | float | int | str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("start balance must be a number")
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"start balance is not a number: {value!r}") from None
    if not result.is_finite() or result <= 0:
        raise ValueError(f"start balance must be a positive amount, got {value!r}")
    return result


def _funding(funding: Iterable[Any] | None) -> tuple[Decimal | None, dict[str, Decimal]]:
    """Sum `userFunding` entries ({"time", "delta": {"type": "funding", "coin", "usdc", ...}}; a bare delta
    is accepted too). Returns (total, per coin)."""
    if funding is None:
        return None, {}
    total = Decimal(0)
    per_coin: dict[str, Decimal] = {}
    for i, entry in enumerate(funding):
        delta = entry.get("delta", entry) if isinstance(entry, dict) else None
        if not isinstance(delta, dict) or "usdc" not in delta:
            raise FillsError(f"funding entry at index {i}: expected an object with delta.usdc")
        if delta.get("type", "funding") != "funding":
            continue
        try:
            amount = _to_decimal(delta["usdc"], "usdc", None)
        except FillsError:
            shown = _show(delta["usdc"])
            raise FillsError(f"funding entry at index {i}: 'usdc' is not a decimal number: {shown}") from None
        total += amount
        coin = delta.get("coin")
        if isinstance(coin, str):
            per_coin[coin] = per_coin.get(coin, Decimal(0)) + amount
    return total, per_coin


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _ratio_block(pnl: np.ndarray, scale: int) -> dict[str, Any]:
    """Counts and per-trade ratios from exact trade PnLs (ints of 10^-scale)."""
    n = len(pnl)
    win, loss = pnl > 0, pnl < 0
    wins, losses = int(win.sum()), int(loss.sum())
    gp = int(pnl[win].sum()) if wins else 0
    gl = -int(pnl[loss].sum()) if losses else 0
    if n == 0 or (gp == 0 and gl == 0):
        pf: float | None = None
    elif gl == 0:
        pf = math.inf
    else:
        pf = gp / gl
    return {
        "trades": n, "wins": wins, "losses": losses, "breakevens": n - wins - losses,
        "win_rate": wins / n if n else None,
        "profit_factor": pf,
        "best_trade": _dec(pnl.max(), scale) if n else None,
        "worst_trade": _dec(pnl.min(), scale) if n else None,
        "avg_win": _dec(gp, scale) / wins if wins else None,
        "avg_loss": _dec(gl, scale) / losses if losses else None,
        # winrate*avg_win - lossrate*avg_loss = (GP - GL) / n
        "expectancy": _dec(gp - gl, scale) / n if n else None,
    }


def compute_metrics(
    fills: Iterable[dict[str, Any]] | pd.DataFrame,
    start_balance: Decimal | float | int | str = Decimal(10000),
    funding: list[Any] | None = None,
    *,
    days: tuple[date, date] | None = None,
    tz: str | None = None,
) -> TradeMetrics:
    """All metrics for a window of fills (a list as the info API returns it, or a fills_frame).

    The daily equity (and so Sharpe and Sortino) covers every calendar day from the first to the last fill,
    in UTC; `days=(first, last)` makes it cover exactly those days (both included, days without fills
    count as flat days), and `tz` (an IANA name) makes the days that zone's calendar days."""
    frame = fills_frame(fills)
    trades = closed_trades(frame)
    start = _balance(start_balance)
    scale = frame.attrs["money_scale"]
    closed_u = frame["closed_pnl_u"].to_numpy()
    fee_u = frame["fee_u"].to_numpy()
    pnl_u = trades["pnl_u"].to_numpy()
    if len(pnl_u) == 0:
        pnl_u = np.zeros(0, dtype=np.int64)
    bump = max(0, _decimals_of(start) - scale)
    if bump:  # the start balance has more decimals than any fill
        closed_u, fee_u, pnl_u = (_rescale(a, bump) for a in (closed_u, fee_u, pnl_u))
        scale += bump
    start_u = int(start.scaleb(scale))
    if pnl_u.dtype != object and (not _safe(pnl_u) or float(np.abs(pnl_u).sum()) + abs(start_u) >= _INT64_SAFE):
        pnl_u = pnl_u.astype(object)  # exact Python ints when int64 could overflow

    total_fees_u = int(fee_u.sum()) if len(fee_u) else 0
    total_pnl_u = (int(closed_u.sum()) if len(closed_u) else 0) - total_fees_u
    funding_total, funding_by_coin = _funding(funding)

    block = _ratio_block(pnl_u, scale)
    trade_pnl_u = int(pnl_u.sum()) if len(pnl_u) else 0

    # Equity moves by closedPnl - fee of every fill at its time (rule 9: opening fees are costs when paid);
    # fills sharing a millisecond move it once. The start is the first point.
    net_u = closed_u - fee_u
    if net_u.dtype != object and float(np.abs(net_u.astype(np.float64)).sum()) + abs(start_u) >= _INT64_SAFE:
        net_u = net_u.astype(object)  # exact Python ints when int64 could overflow
    times = frame["time"].to_numpy()
    _, moves = _moves(times, net_u)
    equity = np.concatenate(([start_u], start_u + moves)).astype(object if net_u.dtype == object else np.int64)
    peak = np.maximum.accumulate(equity)
    drawdown = peak - equity
    max_dd_u = int(drawdown.max())
    max_dd_pct = float((drawdown.astype(np.float64) / peak.astype(np.float64)).max())

    # daily equity from the first to the last fill day (UTC, or `tz`), or over the `days` asked for
    daily: list[tuple[date, Decimal]] = []
    sharpe = sortino = None
    period_start = period_end = None
    epoch = date(1970, 1, 1)
    if len(frame):
        first_ms, last_ms = int(times.min()), int(times.max())
        period_start, period_end = _utc(first_ms), _utc(last_ms)
    if len(frame) or days is not None:
        if days is not None:
            first_day, last_day = ((d - epoch).days for d in days)
        else:
            first_day, last_day = (int(d) for d in _day_numbers(np.array([first_ms, last_ms]), tz))
        day_range = np.arange(first_day, last_day + 1)
        if len(net_u):
            per_day = pd.Series(net_u, copy=False).groupby(_day_numbers(times.astype(np.int64), tz)).sum()
            day_pnl = per_day.reindex(day_range, fill_value=0).to_numpy()
            if day_pnl.dtype != object:
                day_pnl = day_pnl.astype(np.int64)
        else:
            day_pnl = np.zeros(len(day_range), dtype=np.int64)
        day_equity = start_u + np.cumsum(day_pnl)
        daily = [(epoch + timedelta(days=int(d)), _dec(e, scale)) for d, e in zip(day_range, day_equity)]
        sharpe, sortino = _sharpe_sortino(np.concatenate(([start_u], day_equity)).astype(np.float64))

    by_coin = _by_coin(frame, trades, pnl_u, closed_u, fee_u, scale, funding_by_coin, funding is not None)
    return TradeMetrics(
        total_pnl=_dec(total_pnl_u, scale), fees=_dec(total_fees_u, scale), funding=funding_total,
        max_drawdown=_dec(max_dd_u, scale), max_drawdown_pct=max_dd_pct, sharpe=sharpe, sortino=sortino,
        longest_winning_streak=_longest_run(pnl_u > 0), longest_losing_streak=_longest_run(pnl_u < 0),
        equity_start=_dec(start_u, scale), equity_end=_dec(start_u + total_pnl_u, scale), daily_equity=daily,
        period_start=period_start, period_end=period_end, by_coin=by_coin, fills=len(frame),
        duplicates_dropped=int(frame.attrs.get("duplicates_dropped", 0)), trade_pnl=_dec(trade_pnl_u, scale),
        **block,
    )


def _moves(times: np.ndarray, net: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, cumulative net) after each distinct time of time-sorted fills: one point per millisecond."""
    if not len(times):
        return times, net
    last_of_time = np.flatnonzero(np.r_[times[1:] != times[:-1], True])
    return times[last_of_time], np.cumsum(net)[last_of_time]


def net_pnl(fills: Iterable[dict[str, Any]] | pd.DataFrame) -> Decimal:
    """sum(closedPnl) - sum(fee) over every fill (duplicates dropped): how far the fills moved the equity."""
    frame = fills_frame(fills)
    net = frame["closed_pnl_u"].to_numpy() - frame["fee_u"].to_numpy()
    return _dec(int(net.sum()) if len(net) else 0, frame.attrs["money_scale"])


def equity_curve(fills: Iterable[dict[str, Any]] | pd.DataFrame,
                 start_balance: Decimal | float | int | str) -> list[tuple[datetime, float]]:
    """The equity after every distinct fill time (start balance + closedPnl - fee of every fill so far), for
    charts: the curve compute_metrics takes its drawdown from, without the starting point."""
    frame = fills_frame(fills)
    scale = frame.attrs["money_scale"]
    net = _units_to_float(frame["closed_pnl_u"].to_numpy() - frame["fee_u"].to_numpy(), scale)
    times, cumulative = _moves(frame["time"].to_numpy(), net)
    start = float(_balance(start_balance))
    return [(_utc(int(t)), start + float(c)) for t, c in zip(times, cumulative)]


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _day_numbers(ms: np.ndarray, tz: str | None) -> np.ndarray:
    """Calendar day (days since 1970-01-01) of each epoch-ms time, in UTC or in the zone `tz`."""
    if tz is None or tz == "UTC":
        return ms // DAY_MS
    local = pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True)).tz_convert(tz).tz_localize(None)
    return local.to_numpy().astype("datetime64[D]").astype(np.int64)


def _sharpe_sortino(equity: np.ndarray) -> tuple[float | None, float | None]:
    """Annualised daily Sharpe (sample std) and Sortino (downside deviation over all N days)."""
    if len(equity) < 3 or (equity[:-1] <= 0).any():  # fewer than two returns, or returns undefined
        return None, None
    returns = equity[1:] / equity[:-1] - 1.0
    mean = float(returns.mean())
    std = float(returns.std(ddof=1))
    tiny = 1e-15 * max(1.0, abs(mean))
    sharpe = mean / std * ANNUALISATION if std > tiny else None
    downside = math.sqrt(float((np.minimum(returns, 0.0) ** 2).sum()) / len(returns))
    sortino = mean / downside * ANNUALISATION if downside > tiny else None
    return sharpe, sortino


def _by_coin(frame: pd.DataFrame, trades: pd.DataFrame, pnl_u: np.ndarray, closed_u: np.ndarray,
             fee_u: np.ndarray, scale: int, funding_by_coin: dict[str, Decimal], has_funding: bool,
             ) -> dict[str, CoinMetrics]:
    coins = frame["coin"].to_numpy()
    fills_by_coin = pd.DataFrame({"closed": closed_u, "fee": fee_u}).groupby(coins, sort=True).sum()
    positions = pd.Series(pnl_u, copy=False).groupby(trades["coin"].to_numpy(), sort=False).indices
    empty = pnl_u[:0]
    result: dict[str, CoinMetrics] = {}
    for coin in fills_by_coin.index:  # a handful of coins: this loop is per coin, not per fill
        pnl = pnl_u[positions[coin]] if coin in positions else empty
        closed, fee = int(fills_by_coin.at[coin, "closed"]), int(fills_by_coin.at[coin, "fee"])
        funding = funding_by_coin.get(coin, Decimal(0)) if has_funding else None
        result[str(coin)] = CoinMetrics(total_pnl=_dec(closed - fee, scale), fees=_dec(fee, scale),
                                        funding=funding, **_ratio_block(pnl, scale))
    return result


# ----------------------------------------------------------------------------------------------------------
# Output


def _money(value: Decimal | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    if value != 0 and abs(value) < Decimal("0.01"):
        text = f"{value.normalize():f}"
        return f"+{text}" if sign and value > 0 else text
    return f"{value:+,.2f}" if sign else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f} %"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def format_metrics_text(metrics: TradeMetrics) -> str:
    """A human summary: headline numbers, then a per-coin table."""
    m = metrics
    if m.period_start is not None and m.period_end is not None:
        n_days = len(m.daily_equity)
        period = (f"{m.period_start:%Y-%m-%d %H:%M} .. {m.period_end:%Y-%m-%d %H:%M} UTC "
                  f"({n_days} day{'s' if n_days != 1 else ''})")
    else:
        period = "no fills"
    fills = f"{m.fills}" + (f" ({m.duplicates_dropped} duplicates dropped)" if m.duplicates_dropped else "")
    rows = [
        ("Period", period),
        ("Fills", fills),
        ("Trades", f"{m.trades}  (wins {m.wins}, losses {m.losses}, break-even {m.breakevens})"),
        ("Win rate", _pct(m.win_rate)),
        ("Profit factor", _ratio(m.profit_factor)),
        ("Total PnL", f"{_money(m.total_pnl, sign=True)}  (closedPnl - fees, all fills)"),
        ("Fees", _money(m.fees)),
        ("Funding", _money(m.funding, sign=True) if m.funding is not None else "n/a (not given)"),
        ("Expectancy / trade", _money(m.expectancy, sign=True)),
        ("Average win", _money(m.avg_win)),
        ("Average loss", _money(m.avg_loss)),
        ("Best trade", _money(m.best_trade, sign=True)),
        ("Worst trade", _money(m.worst_trade, sign=True)),
        ("Longest streaks", f"{m.longest_winning_streak} wins, {m.longest_losing_streak} losses"),
        ("Max drawdown", f"{_money(m.max_drawdown)}  ({_pct(m.max_drawdown_pct)} of peak)"),
        ("Sharpe (daily, ann.)", _ratio(m.sharpe)),
        ("Sortino (daily, ann.)", _ratio(m.sortino)),
        ("Equity", f"{_money(m.equity_start)} -> {_money(m.equity_end)}  (start + total PnL, every fee included)"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["Trade analytics", ""] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if m.by_coin:
        header = ("Coin", "Trades", "Wins", "Losses", "BE", "Win rate", "PF", "PnL", "Fees")
        table = [header] + [
            (coin, str(c.trades), str(c.wins), str(c.losses), str(c.breakevens), _pct(c.win_rate),
             _ratio(c.profit_factor), _money(c.total_pnl, sign=True), _money(c.fees))
            for coin, c in m.by_coin.items()
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines += ["", "By coin"]
        for row in table:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def analyze_trades_command(fills: str, start_balance: float = 10000.0, as_json: bool = False) -> tuple[int, str]:
    """`runbook analyze trades --fills FILE [--start-balance X] [--json]` without the CLI plumbing.

    Returns (exit code, text): (0, report) or (2, "error: <one line>") for bad input."""
    try:
        _balance(start_balance)
    except ValueError as exc:
        return 2, f"error: --start-balance: {exc}"
    try:
        frame = fills_frame(_read_fill_list(fills))
        metrics = compute_metrics(frame, start_balance=start_balance)
    except FillsError as exc:
        return 2, f"error: {exc}"
    if as_json:
        return 0, json.dumps(metrics.to_dict(), indent=2, allow_nan=False)
    return 0, format_metrics_text(metrics)
