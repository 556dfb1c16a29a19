// Scenario f: axe-core on /login and /account, in English and in Korean (Korean chosen once
// by Accept-Language, once by ?lang=). Reports each page's violations by impact.
import { AxeBuilder } from '@axe-core/playwright';
import { config, launch, result } from './harness.mjs';
import { loginToAccount } from './devices.mjs';

const variants = [
  { name: 'en', headers: { 'Accept-Language': 'en-US,en;q=0.9' } },
  { name: 'ko (Accept-Language)', headers: { 'Accept-Language': 'ko-KR,ko;q=0.9' } },
  { name: 'ko (?lang=ko)', headers: { 'Accept-Language': 'en-US,en;q=0.9' }, lang: 'ko' },
];

async function audit(page) {
  const { violations, passes } = await new AxeBuilder({ page }).analyze();
  return {
    lang: await page.evaluate(() => document.documentElement.lang),
    title: await page.title(),
    passes: passes.length,
    violations: violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })),
  };
}

const browser = await launch();
const pages = [];
try {
  for (const variant of variants) {
    const context = await browser.newContext({ extraHTTPHeaders: variant.headers });
    const login = await context.newPage();
    await login.goto(`${config.tokend}/login${variant.lang ? `?lang=${variant.lang}` : ''}`);
    await login.waitForSelector('form#login-form');
    pages.push({ page: '/login', variant: variant.name, ...(await audit(login)) });
    await login.close();
    const account = await loginToAccount(context, { ...config, lang: variant.lang });
    pages.push({ page: '/account', variant: variant.name, ...(await audit(account)) });
    await context.close();
  }
  result({ pages });
} finally {
  await browser.close();
}
