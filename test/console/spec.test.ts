import { describe, expect, it } from 'vitest';
import { formatConsoleSpec, parseConsoleSpec } from '../../runner-agent/src/console/spec.js';

describe('parseConsoleSpec', () => {
  it.each([
    ['serial:/dev/ttyUSB0@115200', { kind: 'serial', device: '/dev/ttyUSB0', baud: 115200 }],
    ['SERIAL:/dev/ttyAMA0@9600', { kind: 'serial', device: '/dev/ttyAMA0', baud: 9600 }],
    ['serial:/dev/ttyUSB1', { kind: 'serial', device: '/dev/ttyUSB1', baud: 115200 }],
    [
      'serial:/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0@921600',
      { kind: 'serial', device: '/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0', baud: 921600 },
    ],
    ['tcp:10.0.0.5:2001', { kind: 'tcp', host: '10.0.0.5', port: 2001 }],
    [' tcp:console-server.lab:3000 ', { kind: 'tcp', host: 'console-server.lab', port: 3000 }],
    ['tcp:[fd00::5]:2001', { kind: 'tcp', host: 'fd00::5', port: 2001 }],
    ['unix:/run/qemu/pi3.serial', { kind: 'unix', path: '/run/qemu/pi3.serial' }],
  ])('parses %j', (text, spec) => {
    expect(parseConsoleSpec(text)).toEqual(spec);
  });

  it.each([
    ['', /unknown console spec "": expected serial:<device>\[@<baud>\], tcp:<host>:<port> or unix:<socket path>/],
    ['/dev/ttyUSB0', /unknown console spec/],
    ['telnet:host:23', /unknown console spec "telnet:host:23"/],
    ['serial:', /needs a device/],
    ['serial:@115200', /needs a device/],
    ['serial:ttyUSB0@115200', /absolute device path, got "ttyUSB0"/],
    ['serial:/dev/ttyUSB0@11520', /11520 is not a standard baud rate/],
    ['serial:/dev/ttyUSB0@fast', /baud rate after "@" must be a number/],
    ['tcp:2001', /expected tcp:<host>:<port>/],
    ['tcp:host:0', /"0" is not a TCP port/],
    ['tcp:host:70000', /"70000" is not a TCP port/],
    ['tcp::2001', /"" is not a host name/],
    ['tcp:fd00::5:2001', /write an IPv6 host in brackets/],
    ['tcp:[nope]:2001', /"nope" is not an IPv6 address/],
    ['unix:', /needs the path/],
    ['unix:serial.sock', /absolute socket path/],
    [`unix:/${'x'.repeat(120)}`, /longer than a unix socket allows/],
  ])('refuses %j', (text, reason) => {
    expect(() => parseConsoleSpec(text)).toThrow(reason);
  });

  it.each(['serial:/dev/ttyUSB0@115200', 'tcp:10.0.0.5:2001', 'tcp:[fd00::5]:2001', 'unix:/run/q.sock'])(
    'formats %j back to itself',
    (text) => {
      expect(formatConsoleSpec(parseConsoleSpec(text))).toBe(text);
    },
  );

  it('formats a serial spec with its default rate spelled out', () => {
    expect(formatConsoleSpec(parseConsoleSpec('serial:/dev/ttyUSB3'))).toBe('serial:/dev/ttyUSB3@115200');
  });
});
