"""Create the core tables: sketches, reviews, threshold changes, users, API keys.

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 01:35:27.223599
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('prefix', sa.String(length=12), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )
    op.create_table('sketches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('client', sa.String(length=100), nullable=False),
    sa.Column('client_ref', sa.String(length=200), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source_format', sa.String(length=20), nullable=False),
    sa.Column('drawing', sa.JSON(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('input_bitmap', sa.LargeBinary(), nullable=True),
    sa.Column('reconstruction', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('flagged', sa.Boolean(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verdict', sa.String(length=10), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sketches')),
    sa.UniqueConstraint('client', 'client_ref', name='uq_sketches_client_client_ref')
    )
    with op.batch_alter_table('sketches', schema=None) as batch_op:
        batch_op.create_index('ix_sketches_client_submitted', ['client', 'submitted_at'], unique=False)
        batch_op.create_index('ix_sketches_flagged_score', ['flagged', 'score'], unique=False)
        batch_op.create_index('ix_sketches_model_version_score', ['model_version', 'score'], unique=False)
        batch_op.create_index('ix_sketches_score', ['score'], unique=False)
        batch_op.create_index('ix_sketches_status_submitted', ['status', 'submitted_at'], unique=False)
        batch_op.create_index('ix_sketches_submitted_at', ['submitted_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sketches_verdict'), ['verdict'], unique=False)

    op.create_table('threshold_changes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('previous', sa.Float(), nullable=True),
    sa.Column('changed_by', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_threshold_changes'))
    )
    with op.batch_alter_table('threshold_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_threshold_changes_created_at'), ['created_at'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('reviews',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sketch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('verdict', sa.String(length=10), nullable=False),
    sa.Column('reviewer', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sketch_id'], ['sketches.id'], name=op.f('fk_reviews_sketch_id_sketches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews'))
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_sketch_id'), ['sketch_id'], unique=False)



def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_sketch_id'))

    op.drop_table('reviews')
    op.drop_table('users')
    with op.batch_alter_table('threshold_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_threshold_changes_created_at'))

    op.drop_table('threshold_changes')
    with op.batch_alter_table('sketches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sketches_verdict'))
        batch_op.drop_index('ix_sketches_submitted_at')
        batch_op.drop_index('ix_sketches_status_submitted')
        batch_op.drop_index('ix_sketches_score')
        batch_op.drop_index('ix_sketches_model_version_score')
        batch_op.drop_index('ix_sketches_flagged_score')
        batch_op.drop_index('ix_sketches_client_submitted')

    op.drop_table('sketches')
    op.drop_table('api_keys')
