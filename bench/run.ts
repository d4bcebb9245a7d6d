/**
 * `npm run bench`: every benchmark, each printing a table with ratios against a reference measured
 * in the same run. Pass names to run a subset: `npm run bench -- tftp upload`.
 */
const benches: Record<string, () => Promise<void>> = {
  tftp: async () => (await import('./tftp.js')).runTftpBench(),
  'tftp-flood': async () => (await import('./tftp-flood.js')).runTftpFloodBench(),
  upload: async () => (await import('./upload.js')).runUploadBench(),
  store: async () => (await import('./store.js')).runStoreBench(),
  staging: async () => (await import('./staging.js')).runStagingBench(),
  action: async () => void (await (await import('./action.js')).runActionBench()),
  'uboot-tftp': async () => (await import('./uboot-tftp.js')).runUbootTftpBench(),
  stage1: async () => (await import('./stage1.js')).runStage1Bench(),
  inject: async () => (await import('./inject.js')).runInjectBench(),
  'ws-flood': async () => (await import('./ws-flood.js')).runWsFloodBench(),
  'mapped-flash': async () => (await import('./mapped-flash.js')).runMappedFlashBench(),
  dashboard: async () => (await import('./dashboard.js')).runDashboardBench(),
  nbd: async () => (await import('./nbd.js')).runNbdBench(),
  netboot: async () => (await import('./netboot.js')).runNetbootBench(),
  ota: async () => (await import('./ota.js')).runOtaBench(),
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
for (const name of wanted)
  if (!benches[name]) throw new Error(`unknown bench "${name}"; known: ${Object.keys(benches).join(', ')}`);
let failed = false;
for (const [name, run] of Object.entries(benches)) {
  if (wanted.length && !wanted.includes(name)) continue;
  console.log(`\n=== bench: ${name} ===`);
  try {
    await run();
  } catch (err) {
    failed = true;
    console.error(`bench ${name} failed: ${(err as Error)?.stack ?? String(err)}`);
  }
}
process.exit(failed ? 1 : 0);
