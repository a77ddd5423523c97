#!/usr/bin/env python3
"""Renders an HTML page in headless Chromium over the DevTools protocol, as a reader would see
it on screen and in print, and reports what a test needs to judge it.

Usage: render_html.py PAGE.html SCREENSHOT.png SELECTOR...

Prints one JSON object: console errors and uncaught exceptions, the selectors that match
nothing, those whose element is hidden when printed, labels of class `mark` that overlap
another in the same SVG, the screenshot's size in bytes and the printed PDF's.
"""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

CHECKS = r"""
(selectors) => {
  const missing = selectors.filter(s => !document.querySelector(s));
  const hidden = selectors.filter(s => {
    const e = document.querySelector(s);
    return e && e.getClientRects().length === 0;
  });
  let overlaps = [];
  for (const svg of document.querySelectorAll('svg')) {
    const boxes = [...svg.querySelectorAll('text.mark')].map(t => [t.textContent, t.getBBox()]);
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [na, a] = boxes[i], [nb, b] = boxes[j];
      if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height)
        overlaps.push(na + '/' + nb);
    }
  }
  return {missing, hidden, overlaps};
}
"""


class Page:
    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        await self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_for(self, method, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            for m in self.events:
                if m.get("method") == method:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(method)
            self.events.append(json.loads(await asyncio.wait_for(self.ws.recv(), left)))

    async def evaluate(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"]["value"]


async def render(page_path, png_path, selectors):
    chrome = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(c)), None)
    if not chrome:
        sys.exit("render_html.py: no Chromium found (install the `chromium` package)")
    profile = tempfile.mkdtemp(prefix="lameduck-chromium-")
    proc = subprocess.Popen(
        [chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("render_html.py: Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        target = next(t for t in targets if t.get("type") == "page")
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=64 << 20) as ws:
            page = Page(ws)
            for domain in ("Runtime", "Log", "Page"):
                await page.call(f"{domain}.enable")
            await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                            deviceScaleFactor=1, mobile=False)
            await page.call("Page.navigate", url="file://" + os.path.abspath(page_path))
            await page.wait_for("Page.loadEventFired")
            screen = await page.evaluate(f"({CHECKS})({json.dumps(selectors)})")
            shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            png = base64.b64decode(shot["data"])
            with open(png_path, "wb") as f:
                f.write(png)
            await page.call("Emulation.setEmulatedMedia", media="print")
            printed = await page.evaluate(f"({CHECKS})({json.dumps(selectors)})")
            pdf = await page.call("Page.printToPDF", printBackground=True)
            errors = []
            for m in page.events:
                p = m.get("params", {})
                if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
                elif m.get("method") == "Runtime.exceptionThrown":
                    errors.append(p["exceptionDetails"].get("text", "exception"))
                elif m.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                    errors.append(p["entry"].get("text", ""))
            return {
                "console_errors": errors,
                "missing": screen["missing"],
                "hidden_on_screen": screen["hidden"],
                "hidden_in_print": printed["hidden"],
                "overlapping_labels": screen["overlaps"],
                "screenshot_bytes": len(png),
                "pdf_bytes": len(base64.b64decode(pdf["data"])),
            }
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(json.dumps(asyncio.run(render(sys.argv[1], sys.argv[2], sys.argv[3:]))))
