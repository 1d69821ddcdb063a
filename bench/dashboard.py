"""Benchmark: how fast the dashboard paints, in headless chromium, next to a blank page.

Needs a running gateway (`bin/up`) and chromium (`vdip stack browser`). Loads
``/dashboard/`` ROUNDS times in fresh browser contexts (no cache) and reads the browser's own
``first-contentful-paint`` and ``domContentLoaded`` timings; the baseline is an ``about:blank``-like
data: page with one line of text, loaded the same way in the same run.

Run: .venv/bin/python -m bench.dashboard [--url http://127.0.0.1:8000] [--rounds 15]
"""

import argparse
import asyncio
import shutil
import statistics

from playwright.async_api import Browser, async_playwright

TIMINGS = """() => {
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    const nav = performance.getEntriesByType("navigation")[0];
    return [paint ? paint.startTime : NaN, nav ? nav.domContentLoadedEventEnd : NaN];
}"""


async def measure(browser: Browser, url: str) -> tuple[float, float]:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(url, wait_until="load")
    await page.wait_for_timeout(50)  # let the paint entry be recorded
    paint, ready = await page.evaluate(TIMINGS)
    await context.close()
    return float(paint), float(ready)


async def main(url: str, rounds: int) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "install chromium first: .venv/bin/vdip stack browser"
    blank = "data:text/html,<p>blank</p>"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        await measure(browser, f"{url}/dashboard/")  # warm-up
        results: dict[str, list[tuple[float, float]]] = {"dashboard": [], "blank page": []}
        for _ in range(rounds):
            results["dashboard"].append(await measure(browser, f"{url}/dashboard/"))
            results["blank page"].append(await measure(browser, blank))
        await browser.close()
    print(f"medians over {rounds} loads (ms):")
    for name, samples in results.items():
        paint = statistics.median(p for p, _ in samples)
        ready = statistics.median(r for _, r in samples)
        print(f"  {name:11s} first contentful paint {paint:7.1f}   DOMContentLoaded {ready:7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.rounds))
