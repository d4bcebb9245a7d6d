import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Network tests bind real sockets; run files in parallel processes, tests in a file in order.
    pool: 'forks',
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
