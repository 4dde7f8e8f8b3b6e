const hypersdk = require('@hypersdk/core')

const vms = hypersdk.local('examples/vms')
vms.export('demo-vm', 'out-js', { verify: true, overwrite: true })
  .then((r) => console.log(r.location, r.size, r.verified ? 'verified' : 'NOT verified'))
