// exec --device and pass --device: the VFIO device fds the broker hands with the iommufd reach
// QEMU, as inherited fds whose numbers replace {vfio:ADDR} (exec) or as QMP getfd names
// vfio-ADDR (pass); a refusal on the way leaves no fd behind and the lease released.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../cli/main.ts';
import { QmpClient } from '../../client/qmp.ts';
import { closeFd, memfd } from '../../native/sys.ts';
import { UnixServer, type UnixConnection } from '../../native/socket.ts';
import { REPO } from '../support/daemon.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { captureIo } from './io-capture.ts';
import { FakeBroker, wireLease, type ReceivedCall, type Script } from '../client/fake-broker.ts';
import { qemuFdTargets, startQemu, stopQemu, type Qemu } from '../client/qemu.ts';

const BIN = join(REPO, 'bin', 'iommufdctl');
const A = '0000:00:03.0';
const B = '0000:00:04.0';

/** Answers an Open with the iommufd and one memfd per device asked for, named after its address. */
const openWithDevices: Script = (call: ReceivedCall) => {
  const asked = (call.parameters['devices'] as string[] | undefined) ?? [];
  return {
    reply: {
      lease: wireLease({ pid: call.fdPids[0] ?? call.peerPid, ...(asked.length === 0 ? {} : { devices: asked.map((address, i) => ({ address, cdev: `vfio${i}` })) }) }),
      fileDescriptor: 0,
      ...(asked.length === 0 ? {} : { devices: asked.map((address, i) => ({ address, fileDescriptor: i + 1 })) }),
    },
    fds: [memfd('fake-iommufd'), ...asked.map((address) => memfd(`fake-vfio-${address}`))],
  };
};

async function runBin(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const [code] = await once(child, 'close') as [number | null];
  return { code, stdout, stderr };
}

test('exec --device: {vfio:ADDR} becomes the number of an inherited fd of that very device', async () => {
  const fake = FakeBroker.start(openWithDevices);
  try {
    const report = 'echo "io={iommufd} a={vfio:00:03.0} b={vfio:0000:00:04.0}"; echo "env=$IOMMUFD_BROKER_DEVICE_FDS"; '
      + 'for fd in {iommufd} {vfio:0000:00:03.0} {vfio:00:04.0}; do readlink /proc/$$/fd/$fd; done; exit 7';
    const r = await runBin(['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G', '--device', '00:03.0', '--device', B, '--',
      'sh', '-c', report]);
    assert.equal(r.code, 7, r.stderr);
    assert.deepEqual(fake.calls[0]?.parameters['devices'], [A, B], 'sent canonical, in the order given');
    const m = /^io=(\d+) a=(\d+) b=(\d+)$/m.exec(r.stdout);
    assert.ok(m !== null, r.stdout);
    const [, io, a, b] = m.map(Number);
    assert.equal(new Set([io, a, b]).size, 3);
    assert.match(r.stdout, new RegExp(`^env=${A}=${a},${B}=${b}$`, 'm'));
    const links = r.stdout.split('\n').filter((l) => l.startsWith('/memfd:')).map((l) => l.replace(/ \(deleted\)$/, ''));
    assert.deepEqual(links, ['/memfd:fake-iommufd', `/memfd:fake-vfio-${A}`, `/memfd:fake-vfio-${B}`], 'each number is that device\'s fd');
  } finally {
    fake.close();
  }
});

test('exec --device: a token without its --device is a usage error that costs no lease', async () => {
  const fake = FakeBroker.start(openWithDevices);
  try {
    const r = await runBin(['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G', '--', 'sh', '-c', 'echo {iommufd} {vfio:00:03.0}']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /\{vfio:00:03\.0\} names no --device given/);
    assert.equal(fake.calls.length, 0);
  } finally {
    fake.close();
  }
});

let qemu: Qemu;
before(async () => { qemu = await startQemu(); });
after(async () => { await stopQemu(qemu); });

test('pass --device: QEMU holds each device fd under vfio-ADDR, named in the output', async () => {
  const beforeFds = openFds();
  const fake = FakeBroker.start(openWithDevices);
  try {
    const cap = captureIo();
    const code = await runCli(['pass', '--socket', fake.socket, '--qmp', qemu.qmp, '--fdname', 'iommufd0', '--name', 'vm1', '--memory', '1G',
      '--device', '00:03.0'], cap.io);
    assert.equal(code, 0, cap.stderr());
    assert.deepEqual(fake.calls[0]?.parameters['devices'], [A]);
    assert.match(cap.stdout(), /QEMU holds VFIO device 0000:00:03\.0 as 'vfio-0000:00:03\.0': device_add vfio-pci,iommufd=ID,fd=vfio-0000:00:03\.0/);
    assert.ok(qemuFdTargets(qemu).some((t) => t.includes(`memfd:fake-vfio-${A}`)), 'QEMU holds the device fd');
    const qmp = await QmpClient.connect(qemu.qmp);
    try {
      await qmp.closefd(`vfio-${A}`); // QEMU knows the name: this fails otherwise
      await qmp.closefd('iommufd0');
    } finally {
      qmp.close();
    }
    const json = captureIo();
    assert.equal(await runCli(['pass', '--socket', fake.socket, '--qmp', qemu.qmp, '--fdname', 'iommufd1', '--name', 'vm1', '--memory', '1G',
      '--device', B, '--json'], json.io), 0, json.stderr());
    assert.deepEqual((JSON.parse(json.stdout()) as { devices: unknown }).devices, [{ address: B, fdname: `vfio-${B}` }]);
    const again = await QmpClient.connect(qemu.qmp);
    try {
      await again.closefd(`vfio-${B}`);
      await again.closefd('iommufd1');
    } finally {
      again.close();
    }
  } finally {
    fake.close();
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(leakedSince(beforeFds), [], 'our copies of every fd are closed');
});

test('pass --device: if QEMU refuses a device fd, the fds not sent are closed, QEMU closes the ones it took, the lease is released', async () => {
  const beforeFds = openFds();
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-refusing-qmp-'));
  // closeOffLoop: false: a trusted in-process double; its closes stay synchronous so the fd-leak checks right after close() are exact.
  const server = UnixServer.listen(join(dir, 'qmp.sock'), { mode: 0o600, backlog: 4, closeOffLoop: false });
  const conns: UnixConnection[] = [];
  const commands: string[] = [];
  server.on('connection', (c: UnixConnection) => {
    conns.push(c);
    c.on('error', () => c.close());
    c.on('data', (chunk: Buffer, fds: number[]) => {
      fds.forEach(closeFd);
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l !== '')) {
        const cmd = JSON.parse(line) as { execute: string; arguments?: { fdname?: string }; id: unknown };
        commands.push(`${cmd.execute} ${cmd.arguments?.fdname ?? ''}`.trim());
        const refuse = cmd.execute === 'getfd' && cmd.arguments?.fdname === `vfio-${A}`;
        const answer = refuse ? { error: { class: 'GenericError', desc: 'no room for it' }, id: cmd.id } : { return: {}, id: cmd.id };
        c.send(Buffer.from(`${JSON.stringify(answer)}\n`));
      }
    });
    c.send(Buffer.from('{"QMP": {"version": {}, "capabilities": []}}\n'));
  });
  const fake = FakeBroker.start((call) => (call.method.endsWith('.Open') ? openWithDevices(call, 0) : { reply: { limitRestored: false } }));
  try {
    const cap = captureIo();
    const code = await runCli(['pass', '--socket', fake.socket, '--qmp', join(dir, 'qmp.sock'), '--fdname', 'fd0', '--name', 'vm1',
      '--memory', '1G', '--device', A, '--device', B], cap.io);
    assert.equal(code, 1);
    assert.deepEqual(commands, ['qmp_capabilities', 'getfd fd0', `getfd vfio-${A}`, 'closefd fd0']);
    assert.deepEqual(fake.calls.map((c) => c.method), ['io.iommufd.Broker.Open', 'io.iommufd.Broker.Release']);
    assert.match(cap.stderr(), /QEMU did not take the FD; lease l-0123456789abcdef was released\n.*QEMU refused getfd: no room for it/s);
  } finally {
    fake.close();
    conns.forEach((c) => c.close());
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(leakedSince(beforeFds), [], 'B\'s fd, never sent, was closed');
});
