// Writes the copy tokend serves at /static/tokend-client.js: byte-identical to the source.
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, 'src', 'tokend-client.js');
const target = join(here, '..', '..', 'service', 'static', 'tokend-client.js');
mkdirSync(dirname(target), { recursive: true });
copyFileSync(source, target);
console.log(`wrote ${target}`);
