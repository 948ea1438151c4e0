// Opens each URL in headless Chromium (playwright-core driving the system's browser), waits
// for the page's window.result and prints the results as one JSON array.
// Usage: node drive.cjs CHROMIUM URL...
const { chromium } = require("playwright-core");

(async () => {
  const [executablePath, ...urls] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    // A closed network: no background connections, no QUIC, no GPU.
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const results = [];
  for (const url of urls) {
    const page = await browser.newPage();
    const console = [];
    page.on("console", (message) => console.push(message.text()));
    await page.goto(url);
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: 30000 });
    results.push({ ...(await page.evaluate(() => window.result)), console });
    await page.close();
  }
  await browser.close();
  process.stdout.write(JSON.stringify(results));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
