/**
 * GET /metrics for Prometheus. Authenticated by `Authorization: Bearer`, which Prometheus sends
 * from a scrape config's `authorization.credentials_file`. The config's `metrics.token` is meant
 * for it: Prometheus keeps its credential on another machine, in a config many people may read,
 * and a token that opens only the numbers leases no board and reads no job log when it leaks.
 * The agent token is accepted too (an operator's curl); each comparison is constant-time.
 */
import type { HttpRoute } from '../ws/server.js';
import { bearerToken, plain, tokenMatches } from '../ws/server.js';
import type { LabMetrics } from './lab-metrics.js';

export function metricsRoute(metrics: LabMetrics, tokens: readonly string[]): HttpRoute {
  return {
    methods: ['GET'],
    async handle(req, res) {
      const presented = bearerToken(req.headers.authorization);
      if (!tokens.map((t) => tokenMatches(presented, t)).includes(true)) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="rpi-flash metrics"');
        return plain(res, 401, 'AUTH_FAILED: send Authorization: Bearer <metrics token>\n');
      }
      const { contentType, text } = await metrics.scrape();
      res.writeHead(200, {
        'Content-Type': contentType,
        'Content-Length': Buffer.byteLength(text),
        'Cache-Control': 'no-store',
        'X-Content-Type-Options': 'nosniff',
      });
      res.end(req.method === 'HEAD' ? undefined : text);
    },
  };
}
