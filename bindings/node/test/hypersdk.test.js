'use strict'
// @hypersdk/core against real peers: the example VM, the vCenter simulator
// (tests/peers/vcsim, built by tests/peers/install.sh), qemu-img for every
// VMDK written.

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')
const { spawn, execFileSync } = require('node:child_process')
const readline = require('node:readline')

const hypersdk = require('..')

const ROOT = path.resolve(__dirname, '../../..')
const EXAMPLES = path.join(ROOT, 'examples/vms')

const made = []
function tmp() {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'hypersdk-node-'))
  made.push(d)
  return d
}

function qemuImg(...args) {
  return execFileSync('qemu-img', args, { encoding: 'utf8' })
}

/** Every VMDK of an OVA passes qemu-img check. */
function checkOvaDisks(ova) {
  const dir = tmp()
  execFileSync('tar', ['-xf', ova, '-C', dir])
  const disks = fs.readdirSync(dir).filter((n) => n.endsWith('.vmdk'))
  assert.ok(disks.length > 0)
  for (const d of disks) qemuImg('check', path.join(dir, d))
  return disks
}

let sim
before(async () => {
  const launcher = path.join(ROOT, 'target/peers/vcsim-launcher')
  assert.ok(fs.existsSync(launcher), `${launcher} is missing: run bash tests/peers/install.sh`)
  const child = spawn(launcher, ['-vm', 'nodevm=8,2'], { stdio: ['pipe', 'pipe', 'inherit'] })
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the vcsim launcher did not start within 60 s')), 60000)
    readline.createInterface({ input: child.stdout }).once('line', (l) => {
      clearTimeout(timer)
      resolve(l)
    })
  })
  const info = JSON.parse(line)
  const url = new URL(info.url)
  const ca = path.join(tmp(), 'ca.pem')
  fs.writeFileSync(ca, info.ca_pem)
  sim = {
    child,
    url: `${url.protocol}//${url.host}${url.pathname}`,
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
    thumbprint: info.thumbprint,
    ca,
  }
})

after(() => {
  if (sim) sim.child.stdin.end()
  for (const d of made) fs.rmSync(d, { recursive: true, force: true })
})

test('lists, searches and describes the example VM', async () => {
  const vms = hypersdk.local(EXAMPLES)
  assert.equal(vms.name, 'local')
  const listed = await vms.listVms()
  assert.deepEqual(listed.map((v) => v.name), ['demo-vm'])
  assert.equal(listed[0].powerState, 'off')
  assert.deepEqual((await vms.searchVms({ name: 'demo-*', minCpus: 2 })).map((v) => v.name), ['demo-vm'])
  assert.deepEqual(await vms.searchVms('nothing-*'), [])
  const spec = await vms.getVm('demo-vm')
  assert.equal(spec.disks.length, 2)
  await assert.rejects(vms.searchVms({ nameRegex: '(' }), hypersdk.InvalidArgumentError)
  await assert.rejects(vms.searchVms({ colour: 'red' }), /unknown option 'colour'/)
})

test('exports with a progress callback, verified, every VMDK checked by qemu-img', async () => {
  const out = tmp()
  const events = []
  const vms = hypersdk.local(EXAMPLES)
  const report = await vms.export('demo-vm', out, { verify: true, onProgress: (e) => events.push(e) })
  assert.equal(report.location, path.join(out, 'demo-vm.ova'))
  assert.equal(report.verified, true)
  assert.equal(report.size, fs.statSync(report.location).size)
  assert.equal(events.at(-1).phase, 'done')
  const disks = new Set((await vms.getVm('demo-vm')).disks.map((d) => d.name))
  assert.deepEqual(new Set(events.filter((e) => e.phase === 'disk').map((e) => e.disk)), disks)
  const sha = crypto.createHash('sha256').update(fs.readFileSync(report.location)).digest('hex')
  assert.equal(report.ova.digest, sha)
  const pkg = await hypersdk.verify(report.location)
  assert.equal(pkg.verified, true)
  assert.deepEqual(pkg.vms, ['demo-vm'])
  checkOvaDisks(report.location)
})

test('progress as an async iterator, the export awaited', async () => {
  const out = tmp()
  const job = hypersdk.local(EXAMPLES).startExport('demo-vm', out, { format: 'ovf', digest: 'sha512' })
  const phases = []
  for await (const e of job) phases.push(e.phase)
  const report = await job
  assert.equal(job.finished, true)
  assert.equal(phases.at(-1), 'done')
  assert.ok(phases.includes('disk'))
  assert.equal(report.format, 'ovf')
  assert.equal(report.digestAlgorithm, 'SHA512')
  for (const f of report.files) {
    if (f.name.endsWith('.vmdk')) qemuImg('check', path.join(report.location, f.name))
  }
  assert.equal((await hypersdk.verify(report.location)).verified, true)
})

test('a compressed, encrypted export unwraps to a verified package', async () => {
  const dir = tmp()
  const secret = path.join(dir, 'pass.txt')
  fs.writeFileSync(secret, 'correct horse battery staple\n')
  const report = await hypersdk.local(EXAMPLES).export('demo-vm', path.join(dir, 'out'), {
    compress: 'zstd:3',
    encryptPassphraseFile: secret,
  })
  assert.ok(report.location.endsWith('demo-vm.ova.zst.enc'))
  assert.equal(report.encrypted, true)
  assert.equal((await hypersdk.verify(report.location, { passphraseFile: secret })).verified, true)
  await assert.rejects(hypersdk.verify(report.location), (e) => e instanceof hypersdk.CryptoError && e.code === 'crypto')
  const wrong = path.join(dir, 'wrong.txt')
  fs.writeFileSync(wrong, 'nope\n')
  const plain = path.join(dir, 'plain.ova')
  await assert.rejects(hypersdk.unwrap(report.location, plain, { passphraseFile: wrong }), hypersdk.CryptoError)
  assert.equal(fs.existsSync(plain), false)
  const n = await hypersdk.unwrap(report.location, plain, { passphraseFile: secret })
  assert.equal(n, fs.statSync(plain).size)
  assert.equal((await hypersdk.verify(plain)).verified, true)
  checkOvaDisks(plain)
})

test('failures are Error subclasses with codes', async () => {
  const out = tmp()
  const vms = hypersdk.local(EXAMPLES)
  await assert.rejects(vms.export('no-such-vm', out), (e) => {
    assert.ok(e instanceof hypersdk.NotFoundError && e instanceof hypersdk.HypersdkError && e instanceof Error)
    assert.equal(e.code, 'vm_not_found')
    assert.match(e.message, /no-such-vm/)
    return true
  })
  assert.throws(() => vms.startExport('demo-vm', out, { compress: 'lz4' }), hypersdk.InvalidArgumentError)
  assert.throws(() => vms.startExport('demo-vm', out, { compresss: 'zstd' }), /unknown option 'compresss'/)
  await vms.export('demo-vm', out)
  await assert.rejects(vms.export('demo-vm', out), hypersdk.AlreadyExistsError)
  assert.ok((await vms.export('demo-vm', out, { overwrite: true })).size > 0)
  const bad = path.join(out, 'bad.ova')
  fs.copyFileSync(path.join(out, 'demo-vm.ova'), bad)
  const fd = fs.openSync(bad, 'r+')
  const at = fs.statSync(bad).size - 600000
  const b = Buffer.alloc(1)
  fs.readSync(fd, b, 0, 1, at)
  b[0] ^= 0xff
  fs.writeSync(fd, b, 0, 1, at)
  fs.closeSync(fd)
  await assert.rejects(hypersdk.verify(bad), (e) => e instanceof hypersdk.IntegrityError && /demo-vm-disk1.vmdk/.test(e.message))
  assert.equal((await hypersdk.verify(bad, { strict: false })).verified, false)
  await assert.rejects(hypersdk.verify(path.join(out, 'missing.ova')), hypersdk.FormatError)
})

test('an AbortSignal cancels, the partial export is kept, resume finishes it identically', async () => {
  const out = tmp()
  const vms = hypersdk.local(EXAMPLES)
  const whole = await vms.export('demo-vm', path.join(out, 'whole'), { format: 'ovf' })
  const ac = new AbortController()
  await assert.rejects(
    vms.export('demo-vm', path.join(out, 'cut'), {
      format: 'ovf',
      bwlimit: '16M',
      checkpointMib: 1,
      signal: ac.signal,
      onProgress: (e) => {
        if (e.phase === 'disk' && e.bytesDone >= 24 << 20) ac.abort()
      },
    }),
    (e) => e instanceof hypersdk.CancelledError && e.code === 'cancelled',
  )
  assert.equal(fs.existsSync(path.join(out, 'cut', 'demo-vm')), false)
  const resumed = await vms.export('demo-vm', path.join(out, 'cut'), { format: 'ovf', resume: true })
  assert.ok(resumed.resumedBytes > 0)
  assert.equal(resumed.manifest, whole.manifest)
  for (const f of whole.files) {
    assert.ok(fs.readFileSync(path.join(whole.location, f.name)).equals(fs.readFileSync(path.join(resumed.location, f.name))), f.name)
  }
})

test('the vCenter simulator: CA-verified login, search, export, verify', async () => {
  const vc = await hypersdk.vsphere(sim.url, sim.user, sim.password, { caFile: sim.ca })
  try {
    assert.equal(vc.name, 'vsphere')
    const [vm] = await vc.searchVms('nodevm')
    assert.equal(vm.disks, 2)
    assert.equal(vm.totalCapacity, 10 << 20)
    await assert.rejects(vc.export('missing-vm', tmp()), hypersdk.NotFoundError)
    const report = await vc.export('nodevm', tmp(), { verify: true })
    assert.equal(report.provider, 'vsphere')
    assert.equal(report.verified, true)
    checkOvaDisks(report.location)
  } finally {
    await vc.close()
  }
  const pinned = await hypersdk.vsphere(sim.url, sim.user, sim.password, { thumbprint: sim.thumbprint })
  await pinned.close()
  await assert.rejects(hypersdk.vsphere(sim.url, sim.user, sim.password), hypersdk.ProviderError)
  // Any provider through the registry: a URL plus settings in camelCase.
  const host = new URL(sim.url).host
  const viaUrl = await hypersdk.connect(`vsphere://${sim.user}@${host}`, { password: sim.password, caFile: sim.ca })
  try {
    assert.equal((await viaUrl.searchVms('nodevm')).length, 1)
  } finally {
    await viaUrl.close()
  }
  assert.deepEqual(hypersdk.providerKinds().map((k) => k.kind), ['local', 'vsphere', 'aws', 'azure', 'gcp', 'kubevirt', 'proxmox', 'hyperv'])
  await assert.rejects(hypersdk.connect('vsphere', { url: sim.url, colour: 'blue' }), (e) =>
    e instanceof hypersdk.InvalidArgumentError && /unknown field `colour`/.test(e.message))
})

test('a gs:// output lands in the bucket, read back by Google\'s client and verified in place', async () => {
  const python = path.join(ROOT, 'target/peers/venv/bin/python')
  const peer = spawn(python, [path.join(ROOT, 'tests/peers/gcs_emulator.py'), '--bucket', 'node-exports'],
    { stdio: ['pipe', 'pipe', 'inherit'] })
  try {
    const line = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the GCS emulator did not start within 60 s')), 60000)
      readline.createInterface({ input: peer.stdout }).once('line', (l) => {
        clearTimeout(timer)
        resolve(l)
      })
    })
    const endpoint = `http://127.0.0.1:${JSON.parse(line).port}`
    // Found the way Google's clients find an emulator.
    process.env.STORAGE_EMULATOR_HOST = endpoint
    process.env.XDG_STATE_HOME = tmp()
    const cwd = process.cwd()
    process.chdir(tmp())
    try {
      const report = await hypersdk.local(EXAMPLES).export('demo-vm', 'gs://node-exports/wave/', { verify: true })
      assert.equal(report.location, 'gs://node-exports/wave/demo-vm.ova')
      assert.equal(report.verified, true)
      assert.ok(!fs.existsSync('gs:'), 'never a local directory named gs:')
    } finally {
      process.chdir(cwd)
    }
    const got = path.join(tmp(), 'got.ova')
    execFileSync(python, ['-c', [
      'import sys',
      'from google.api_core.client_options import ClientOptions',
      'from google.auth.credentials import AnonymousCredentials',
      'from google.cloud import storage',
      'c = storage.Client(project="p", credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=sys.argv[1]))',
      'c.bucket("node-exports").blob("wave/demo-vm.ova").download_to_filename(sys.argv[2])',
    ].join('\n'), endpoint, got])
    assert.equal((await hypersdk.verify(got)).verified, true)
    assert.equal((await hypersdk.verify('gs://node-exports/wave/demo-vm.ova')).verified, true)
    checkOvaDisks(got)
  } finally {
    delete process.env.STORAGE_EMULATOR_HOST
    peer.stdin.end()
  }
})
