/** The simulated board side: U-Boot shell model, boards and the lab that resets them. */
export { SimBoard, type SimBoardOptions, type SimBoardState } from './sim-board.js';
export { SimLab } from './sim-lab.js';
export {
  UBootShell,
  BoardResetRequest,
  ShellAborted,
  hextoul,
  dectoul,
  type MmcDevice,
  type UBootShellOptions,
} from './uboot-shell.js';
export { SparseMemory } from './memory.js';
export {
  parseHush,
  simpleCommands,
  HushSyntaxError,
  VAR_MARK,
  type Pipe,
  type SimpleCommand,
  type GroupCommand,
} from './hush-parser.js';
