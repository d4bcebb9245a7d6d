#!/usr/bin/env node
// Entry point of the installed agent: runs the compiled CLI (npm run build emits build/).
import { main } from '../../build/runner-agent/src/cli.js';

main(process.argv.slice(2)).then((code) => process.exit(code));
