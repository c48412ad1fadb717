"""The listener page in Debian's headless Chromium (driven by Playwright), for the page tests."""
import contextlib
import os
import shutil

from netutil import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")


@contextlib.asynccontextmanager
async def tuned_in_page(url: str, *extra_args: str):
    """Debian's headless Chromium (kept off the closed network but for the station) on the page,
    once it has the station's hello; yields (page, errors the page raised)."""
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            *extra_args, "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = await browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.wait_for_function("window.radio && window.radio.hello", timeout=15000)
            yield page, errors
        finally:
            await browser.close()


async def play_in_chromium(url: str, screenshot: str) -> dict:
    async with tuned_in_page(url, "--autoplay-policy=no-user-gesture-required") as (page, errors):
        await page.click("#play")
        await page.wait_for_function("window.radio.stats.audible > 48000", timeout=20000)
        await page.wait_for_function("window.radio.status !== null", timeout=10000)
        figures = {k: await page.inner_text(f"#{k}") for k in
                   ("connection", "prompt", "model", "codec", "buffered", "rtf", "listeners", "jitter")}
        stats = await page.evaluate("({...window.radio.stats, packets: window.radio.packets,"
                                    " codec: window.radio.hello.codec})")
        await page.screenshot(path=screenshot)
        return {"figures": figures, "stats": stats, "errors": errors}
