"""A screenshot of the web page on a finished search: the plot in human units, a front point selected with its
per-layer configuration and actions, the front table (the README's tour shows docs/web-page.png).

Serves the app over an existing data root (what `make run` leaves in runs/service), opens it in Debian's chromium
through Playwright (pip install 'nasprune[browser]'; apt-get install chromium), selects the newest succeeded
search and a front point, and saves the search's section of the page:

    python examples/page_screenshot.py --data-root runs/service --out docs/web-page.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def hover_front_point(page: Any, rank: float = 0.0) -> dict[str, Any]:
    """Move the mouse onto a front point where plotly drew it (the plot's own axis conversion): the one at `rank`
    (0: the first along the x axis, 1: the last). Returns its screen position and front position."""
    page.locator("#plot").scroll_into_view_if_needed()
    at = page.evaluate("""(rank) => {
        const gd = document.getElementById("plot"), all = window.nasprunePlot;
        const front = all.filter((p) => p.kind === "front").sort((a, b) => a.at[0] - b.at[0]);
        const p = front[Math.round(rank * (front.length - 1))];
        const box = gd.getBoundingClientRect(), l = gd._fullLayout;
        return {x: box.left + l._size.l + l.xaxis.l2p(p.at[0]), y: box.top + l._size.t + l.yaxis.l2p(p.at[1]),
                position: p.position};
    }""", rank)
    page.mouse.move(at["x"] - 20, at["y"] - 20)
    page.mouse.move(at["x"], at["y"], steps=5)
    page.wait_for_selector(".hoverlayer .hovertext", state="attached")
    return at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="a data root with a succeeded search")
    parser.add_argument("--out", type=Path, default=Path("docs/web-page.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--rank", type=float, default=0.5, help="which front point: 0 the first along x, 1 the last")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from service.api import serving
    from service.config import Settings

    with serving(Settings(data_root=args.data_root)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.click("#searches tr:has(td.status-succeeded) td:first-child")
        page.wait_for_selector("#plot .scatterlayer .point")
        page.select_option("#xaxis", "params_share")
        page.select_option("#yaxis", "metric")
        page.wait_for_function("document.querySelector('#plot .xtitle').textContent.includes('% of the full model')")
        at = hover_front_point(page, args.rank)
        page.mouse.click(at["x"], at["y"])
        page.wait_for_selector("#selection .layers")
        hover_front_point(page, args.rank)  # the click redrew the plot: hover again for the picture
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.locator("#detail").screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
