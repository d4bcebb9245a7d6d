import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Safety nets, above the waits inside the tests (which name the step they wait for), so a test
    // that hangs on a loaded machine fails with that step rather than vitest's bare timeout.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Network tests bind real sockets; run files in parallel processes, tests in a file in order.
    pool: 'forks',
    // One reporter everywhere, named so vitest does not pick another by environment (its terse
    // 'agent' reporter when it detects a coding agent): CI logs read like a local run.
    reporters: ['default'],
  },
});
