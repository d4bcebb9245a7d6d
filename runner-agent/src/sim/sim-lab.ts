/**
 * The simulated lab: simulated boards by target name, so the `sim` reset spec can power-cycle
 * one (labgrid's "place" for fake hardware).
 */
import type { SimBoard } from './sim-board.js';

export class SimLab {
  private readonly boards = new Map<string, SimBoard>();

  add(board: SimBoard): void {
    if (this.boards.has(board.name)) throw new Error(`simulated lab already has a board named "${board.name}"`);
    this.boards.set(board.name, board);
  }

  get(targetName: string): SimBoard | undefined {
    return this.boards.get(targetName);
  }

  /** Power-cycles the named board; rejects for a name the lab does not have. */
  async reset(targetName: string): Promise<void> {
    const board = this.boards.get(targetName);
    if (!board)
      throw new Error(
        `simulated lab has no board named "${targetName}" (boards: ${[...this.boards.keys()].join(', ') || 'none'})`,
      );
    await board.reset();
  }

  async close(): Promise<void> {
    const boards = [...this.boards.values()];
    this.boards.clear();
    await Promise.all(boards.map((b) => b.close()));
  }
}
