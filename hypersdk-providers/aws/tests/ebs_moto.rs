//! The EBS direct API reads against moto's EBS (with tests/peers/moto_ebs.py):
//! a snapshot written with boto3's `ebs` client (StartSnapshot,
//! PutSnapshotBlock, CompleteSnapshot) becomes a volume (EC2 CreateVolume),
//! whose EC2 snapshot (CreateSnapshot) is listed and read back block by
//! block, each block's SHA-256 checked.

#![allow(clippy::unwrap_used)]

use hypersdk_aws::ebs::Ebs;
use hypersdk_aws::sigv4::Credentials;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

const SEED: &str = r#"
import json, hashlib, base64
ebs = boto3.client('ebs', endpoint_url=sys.argv[1], region_name='us-east-1',
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
snap = ebs.start_snapshot(VolumeSize=1)['SnapshotId']
blocks = {}
for index, seed in [(0, 1), (3, 2), (7, 3)]:
    data = bytes((i * 31 + seed) % 251 for i in range(524288))
    ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=index, BlockData=data, DataLength=len(data),
        Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(), ChecksumAlgorithm='SHA256')
    blocks[index] = hashlib.sha256(data).hexdigest()
ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=3)
ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1',
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
vol = ec2.create_volume(SnapshotId=snap, AvailabilityZone='us-east-1a', Size=1)['VolumeId']
snap2 = ec2.create_snapshot(VolumeId=vol)['SnapshotId']
listed = ebs.list_snapshot_blocks(SnapshotId=snap2)
assert listed['BlockSize'] == 524288, listed['BlockSize']
print(json.dumps({'snap': snap2, 'blocks': blocks}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_written_with_boto3_reads_back_block_by_block() {
    let moto = MotoS3::start();
    let out = moto.boto3(SEED, &[]);
    let seeded: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let snap = seeded["snap"].as_str().unwrap();
    let ebs = Ebs::new(
        &moto.endpoint(),
        "us-east-1",
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        },
    )
    .unwrap();
    let listed = ebs.blocks(snap).await.unwrap();
    assert_eq!(
        listed.blocks.iter().map(|b| b.0).collect::<Vec<_>>(),
        [0, 3, 7]
    );
    assert_eq!(listed.volume_gib, 1);
    // moto reports 512 as the block size; AWS reports 524288, the size of
    // the blocks it serves (moto's too). The moto extension of issue 18
    // answers as AWS does; until then the reads say the size.
    assert!(
        listed.block_size == 512 || listed.block_size == 524_288,
        "{listed:?}"
    );
    for (index, token) in &listed.blocks {
        let data = ebs.block(snap, *index, token, 524_288).await.unwrap();
        let hex: String = ring::digest::digest(&ring::digest::SHA256, &data)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(seeded["blocks"][index.to_string()].as_str().unwrap(), hex);
    }
    // A wrong length or a bad id: errors that say so.
    let (i, t) = &listed.blocks[0];
    let e = ebs.block(snap, *i, t, 1000).await.unwrap_err();
    assert!(e.to_string().contains("holds 1000"), "{e}");
    let e = ebs.blocks("snap-../../x").await.unwrap_err();
    assert!(e.to_string().contains("not an EBS snapshot id"), "{e}");
}
